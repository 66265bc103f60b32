"""xfed: federated fine-tuning of ChatGLM-family models over one Redis server, with secure aggregation."""
import importlib.abc
import importlib.util
import sys

from xfed.version import __version__

__all__ = ["__version__"]


def _register_model_families() -> None:
    """Register xfed's own model families (model_type "chatglm6b") with transformers' Auto classes."""
    try:
        import xfed.models.chatglm  # noqa: F401  (registers on import)
    except ImportError:  # torch/transformers missing or broken: loading such a model will say so itself
        pass


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Registers our Auto classes right after `transformers` is imported, so `import xfed` alone
    is enough for `AutoModelForCausalLM.from_pretrained(saved_chatglm6b_copy)` without making
    every `import xfed` (e.g. `xfed -c validate`) pay for importing torch and transformers."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_model_families()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register_model_families()
elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
