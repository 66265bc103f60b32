"""Turn fed_conf.json into Redis 7 ACL users: one per node (own mailboxes only), the scheduler, the client.

Prints an ACL file (for redis.conf's ``aclfile``) or ``ACL SETUSER`` commands, or applies them to a
running server through an admin connection; then prints, per user, the ``redis_server`` URL that
process puts in its own copy of fed_conf.json (``--configs DIR`` writes those copies for you).

    python scripts/redis_acl.py --config_path config                     # ACL file + URLs
    python scripts/redis_acl.py --config_path config --format commands   # ACL SETUSER lines for redis-cli
    XFED_REDIS_ADMIN_URL=redis://default:ADMINPW@host:6379 \\
        python scripts/redis_acl.py --config_path config --apply --passwords acl_passwords.json \\
        --configs per_node/

Passwords: read from ``--passwords FILE`` (JSON {user: password}) where present, generated
otherwise (192 random bits) and written back to that file (mode 0600), so a re-run keeps them.
Without --passwords, generated passwords are shown once, in the URLs: store them.
``--password-env VAR`` keeps them out of the configs: each copy gets ``redis.username`` and
``redis.password_env: VAR`` and a URL without credentials; the party exports VAR itself.
After applying, turn off the ``default`` user (``ACL SETUSER default off``) or give it a strong
password: otherwise anyone reaching the port bypasses these users entirely.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from xfed.broker.acl import (  # noqa: E402
    AclUser,
    acl_file,
    apply_users,
    default_user_open,
    users_for_fed,
    verify_users,
)
from xfed.config import load_fed_conf, parse_redis_server  # noqa: E402
from xfed.errors import BrokerError, ConfigError, XfedError  # noqa: E402

ADMIN_ENV = "XFED_REDIS_ADMIN_URL"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/redis_acl.py", description=__doc__.splitlines()[0])
    p.add_argument("--config_path", "--config-path", dest="config_path", default="./config",
                   help="folder holding fed_conf.json (default ./config)")
    p.add_argument("--server", help="address the parties use: host:port, redis://host:port/db, rediss://..., "
                                    "unix:///path, redis+cluster://h:p,h:p or redis+sentinel://h:p,h:p/master "
                                    "(default: fed_conf's redis_server)")
    p.add_argument("--tls", action="store_true", help="print rediss:// URLs (default: as --server says)")
    p.add_argument("--passwords", help="JSON file {user: password}; missing ones are generated and added")
    p.add_argument("--format", choices=("acl-file", "commands", "json"), default="acl-file",
                   help="acl-file: lines for redis.conf aclfile; commands: ACL SETUSER lines; json: everything")
    p.add_argument("--apply", action="store_true",
                   help=f"apply with ACL SETUSER through the admin URL in ${ADMIN_ENV} (or --admin-url)")
    p.add_argument("--admin-url", help=f"admin connection (prefer ${ADMIN_ENV}: a URL here shows in `ps`)")
    p.add_argument("--admin-tls-ca-file", help="CA bundle for a rediss:// admin URL")
    p.add_argument("--admin-tls-cert-file", help="client certificate for the admin connection (mutual TLS)")
    p.add_argument("--admin-tls-key-file", help="its key")
    p.add_argument("--save", action="store_true", help="with --apply: ACL SAVE (server started with an aclfile)")
    p.add_argument("--password-env", metavar="VAR",
                   help="keep passwords out of the configs: URLs without credentials, redis.username set and "
                        "redis.password_env = VAR (each party exports VAR=its password)")
    p.add_argument("--configs", metavar="DIR",
                   help="write DIR/<node|scheduler|client>/fed_conf.json, each with its own user's URL")
    return p.parse_args(argv)


def read_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a JSON object of user -> password ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{path}: expected a JSON object of user -> password strings")
    return data


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def server_of(args: argparse.Namespace, fed) -> tuple[str, object]:
    spec = args.server or fed.redis_server
    addr = parse_redis_server(spec)
    if addr.embedded:
        raise ConfigError("fed_conf.json redis_server is \"embedded\": pass --server with the address the "
                          "parties will use (ACLs need a shared redis-server)")
    return spec, addr


def url_for(user: AclUser, addr, tls: bool, *, with_credentials: bool = True) -> str:
    if addr.kind in ("cluster", "sentinel"):  # every node (or the master the sentinels name) takes the user
        return replace(addr, username=user.name if with_credentials else None,
                       password=user.password if with_credentials else None, tls=tls or addr.tls).url()
    auth = f"{quote(user.name, safe='')}:{quote(user.password, safe='')}@" if with_credentials else ""
    if addr.kind == "unix":
        return f"unix://{auth}{addr.unix_socket}"
    if with_credentials:
        return user.url(addr.host, addr.port, db=addr.db, tls=tls or addr.tls)
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    return f"{'rediss' if tls or addr.tls else 'redis'}://{host}:{addr.port}/{addr.db}"


def per_user_conf(fed_path: Path, url: str, user: AclUser, password_env: str | None) -> dict:
    """This user's fed_conf.json: the shared one with redis_server = its URL and only its credentials."""
    conf = json.loads(fed_path.read_text())
    conf["redis_server"] = url
    redis_opts = dict(conf.get("redis") or {})
    for k in ("username", "password", "password_env"):  # they would override the URL's user
        redis_opts.pop(k, None)
    if password_env:
        redis_opts.update(username=user.name, password_env=password_env)
    conf["redis"] = redis_opts
    return conf


def admin_connection(args: argparse.Namespace):
    from xfed.broker.connection import connect
    from xfed.config import RedisAddress

    url = args.admin_url or os.environ.get(ADMIN_ENV)
    if not url:
        raise ConfigError(f"--apply needs an admin connection: set ${ADMIN_ENV} (or --admin-url)")
    files = {k: v for k, v in (("ca_file", args.admin_tls_ca_file), ("cert_file", args.admin_tls_cert_file),
                               ("key_file", args.admin_tls_key_file)) if v}
    return connect(RedisAddress.parse(url, **files), retry_s=5.0, client_name="xfed-acl-admin")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = Path(args.config_path)
    fed = load_fed_conf(config)
    _, addr = server_of(args, fed)
    pw_path = Path(args.passwords) if args.passwords else None
    known = read_passwords(pw_path) if pw_path else {}
    users = users_for_fed(fed, known)
    if pw_path:
        merged = {**known, **{u.name: u.password for u in users}}
        if merged != known:
            write_private(pw_path, json.dumps(merged, indent=1) + "\n")
    if args.password_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.password_env):
        raise ConfigError(f"--password-env {args.password_env!r} is not an environment variable name")
    urls = {u.subject: url_for(u, addr, args.tls, with_credentials=not args.password_env) for u in users}

    if args.format == "json":
        print(json.dumps({"users": [{"name": u.name, "role": u.role, "subject": u.subject, "rules": u.rules(),
                                     "url": urls[u.subject]} for u in users]}, indent=1))
    elif args.format == "commands":
        for u in users:
            print("ACL SETUSER " + " ".join(u.setuser_args()))
    else:
        print(f"# xfed ACL users for namespace {fed.redis.namespace!r} (Redis 7+; hashed passwords)")
        print(acl_file(users), end="")
    if args.apply:
        r = admin_connection(args)
        try:
            names = apply_users(r, users, save=args.save)
            problems = verify_users(r, users, fed.redis.namespace)
            open_default = default_user_open(r)
        finally:
            r.close()
        if problems:
            raise BrokerError(f"applied users do not hold: {'; '.join(problems)}")
        print(f"# applied {len(names)} users: {', '.join(names)}; checked with ACL DRYRUN: each node reads "
              "only its own mailboxes and writes only as itself", file=sys.stderr)
        if open_default:
            print("warning: the server's `default` user is on without a password, so anyone reaching the port "
                  "bypasses these users: ACL SETUSER default off (or give it a strong password)", file=sys.stderr)
    if args.configs:
        out = Path(args.configs)
        for u in users:
            write_private(out / u.subject / "fed_conf.json",
                          json.dumps(per_user_conf(config / "fed_conf.json", urls[u.subject], u, args.password_env),
                                     indent=1) + "\n")
        print(f"# wrote {len(users)} fed_conf.json copies under {out}/<node|scheduler|client>/ "
              "(put each party's trainer_config_*.json, identity key and TLS files beside its own)", file=sys.stderr)
    if args.format != "json":
        stream = sys.stderr if args.format == "commands" else sys.stdout
        print("# redis_server for each party's own fed_conf.json (keep it private to that party):", file=stream)
        for u in users:
            if args.password_env:
                print(f"#   {u.subject}: {urls[u.subject]}  redis.username={u.name}  "
                      f"{args.password_env}={u.password}", file=stream)
            else:
                print(f"#   {u.subject}: {urls[u.subject]}", file=stream)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except XfedError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
