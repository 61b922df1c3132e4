"""fairseq-ext: self-supervised speech representation learning as a fairseq user-dir.

Install with ``bash scripts/setup_env.sh`` (it installs torch and fairseq the safe way first).
"""

from setuptools import find_packages, setup

CONSOLE_SCRIPTS = {
    "fairseq-ext-manifest": "simple_kmeans.manifest",
    "fairseq-ext-dump-mfcc": "simple_kmeans.dump_mfcc_feature",
    "fairseq-ext-dump-hubert": "simple_kmeans.dump_hubert_feature",
    "fairseq-ext-learn-kmeans": "simple_kmeans.learn_kmeans",
    "fairseq-ext-dump-km-label": "simple_kmeans.dump_km_label",
    "fairseq-ext-merge-labels": "simple_kmeans.merge_labels",
    "fairseq-ext-measure-quality": "simple_kmeans.measure_quality",
    "fairseq-ext-export-espnet": "simple_kmeans.export_espnet",
    "fairseq-ext-demo-corpus": "simple_kmeans.make_demo_corpus",
    "fairseq-ext-labels": "simple_kmeans.pipeline",
    "fairseq-ext-dump-pitch": "simple_kmeans.dump_pitch_feature",
    "fairseq-ext-pitch-stats": "simple_kmeans.pitch_stats",
    "fairseq-ext-speaker-labels": "simple_kmeans.speaker_labels",
    "fairseq-ext-train": "fairseq_ext.launch",
    "fairseq-ext-status": "simple_kmeans.status",
    "fairseq-ext-run-shards": "simple_kmeans.run_shards",
    "fairseq-ext-timit-prep": "fairseq_ext.data.timit_prep",
    "fairseq-ext-pr-eval": "fairseq_ext.pr_eval",
    "fairseq-ext-export": "fairseq_ext.export",
    "fairseq-ext-collapse-phones": "fairseq_ext.data.collapse_phones",
    "fairseq-ext-evaluate": "fairseq_ext.evaluate",
}

setup(
    name="fairseq-ext",
    version="0.1.0",
    description="HuBERT-family self-supervised speech models, PASE and speaker heads as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["fairseq_ext", "fairseq_ext.*", "simple_kmeans", "simple_kmeans.*"])
    + ["fairseq_ext.config"],
    # the hydra configs of config/ ship inside the installed package (fairseq_ext.config_dir())
    package_dir={"fairseq_ext.config": "config"},
    package_data={"fairseq_ext.config": ["*/*.yaml", "*/*/*.yaml"]},
    # torch and fairseq are installed by scripts/setup_env.sh (CPU wheel here, the user's CUDA
    # build on GPU nodes; fairseq with --no-deps because it declares torchaudio).
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "hydra-core>=1.3.2",
        "omegaconf>=2.3",
        "joblib>=1.2",
        "scikit-learn>=1.3",
        "soundfile>=0.12",
        "kaldi-native-fbank>=1.19",
        "faiss-cpu>=1.7.4",
        "pyworld>=0.3.4",
        "tqdm>=4.60",
        "threadpoolctl>=3.0",
        "editdistance>=0.6",
        "matplotlib>=3.5",
    ],
    entry_points={
        "console_scripts": [f"{name}={module}:cli" for name, module in CONSOLE_SCRIPTS.items()]
    },
)
