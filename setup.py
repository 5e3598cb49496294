from setuptools import find_packages, setup

EVAL = ["matplotlib>=3.8,<4", "mauve-text>=0.4,<0.5", "faiss-cpu>=1.8,<1.16",
        "scikit-learn>=1.4,<1.10"]

setup(
    name="cdm_jax",
    version="0.2.0",
    description="Continuous diffusion language models in JAX/Flax",
    packages=find_packages(include=["cdm_jax", "cdm_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "chex>=0.1.92,<0.2",
        "ml_collections>=1.1.0,<2",
        "sentencepiece>=0.2.0,<0.3",
        "absl-py>=2.1,<3",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6,<3",
        "sacrebleu>=2.4,<3",
        "etils[epath]>=1.5",
    ],
    entry_points={"console_scripts": [
        "cdm-train=cdm_jax.cli.train:main",
        "cdm-generate=cdm_jax.cli.generate:main",
        "cdm-evaluate=cdm_jax.cli.evaluate:main",
        "cdm-distill=cdm_jax.cli.distill:main",
        "cdm-readout=cdm_jax.cli.readout:main",
        "cdm-prepare=cdm_jax.cli.prepare:main",
        "cdm-compile=cdm_jax.cli.compile:main",
    ]},
    extras_require={
        # MAUVE (scored as null without it) and the experiment plots.
        "eval": EVAL,
        "hf": ["datasets>=3"],
        # gs:// workdirs and corpora (epath through gcsfs; Orbax and TensorBoard need the client).
        "gcs": ["gcsfs", "google-cloud-storage"],
        # libtpu: on a TPU VM it drives the chips; anywhere else `cdm-compile` compiles for them.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "hypothesis>=6.100",
                 "fsspec", "jax[tpu]>=0.10.2,<0.11"] + EVAL,
    },
)
