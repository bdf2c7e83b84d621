"""fjsph-jax: FLIP-based Joint Similarity Preserving Hashing for cross-modal retrieval, in JAX."""
from setuptools import find_packages, setup

setup(
    name="fjsph-jax",
    version="0.1.0",
    description="FJSPH, JSPSH and JDSH cross-modal hashing in JAX/Flax NNX, sharded over TPU/GPU meshes.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fjsph_jax", "fjsph_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "transformers>=4.40",
        "tokenizers>=0.15",
        "safetensors>=0.4",
        "tensorflow-datasets>=4.9.6",
        "grain>=0.2",
        "array_record>=0.5",
        "etils",
        "pillow>=10",
        "scipy>=1.10",
        "h5py>=3.8",
    ],
    extras_require={
        # pytest-xdist: the README's test command runs two workers (`-n 2`).
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # PyTorch only reads .pt/.bin checkpoints and runs the parity tests. Install a CPU
        # build explicitly first (e.g. `pip install torch==2.13.0`): an unpinned torch can
        # pull a multi-GB CUDA build.
        "torch": ["torch>=2.4"],
        "faiss": ["faiss-cpu>=1.7"],
        # config.train.tensorboard=True: TensorBoard event files without TensorFlow.
        "tensorboard": ["tensorboardX>=2.6"],
    },
)
