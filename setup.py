"""Install gmmoe: GM-MoE low-light enhancement as a BasicSR plug-in.

``pip install -e ".[test]"`` (or ``pip install .``). basicsr 1.4.2 is an sdist whose build imports
torch: with torch installed first, ``pip install --no-build-isolation basicsr`` takes seconds
(the Makefile does this); plain pip also works but builds it against a freshly downloaded torch.
"""
from setuptools import find_packages, setup

setup(
    name='gmmoe',
    version='0.1.0',
    description='GM-MoE low-light image enhancement (ICCV 2025) as a BasicSR plug-in',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['gmmoe_arch', 'gmmoe_arch.*', 'datasets_lmdb', 'datasets_lmdb.*']),
    install_requires=[
        'torch>=2.1',
        'torchvision>=0.16',
        'basicsr>=1.4.2',
        'numpy',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'tqdm',
        'pillow',
        'scikit-image',
    ],
    extras_require={'test': ['pytest>=7']},
    entry_points={
        'console_scripts': [
            'basicsr = gmmoe_arch.cli:main',
            'gmmoe = gmmoe_arch.enhance_cli:main',
            'datasets_lmdb = datasets_lmdb.__main__:main',
        ],
        'basicsr.plugins': ['gmmoe = gmmoe_arch'],
    },
)
