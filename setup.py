"""Install gmmoe: GM-MoE low-light enhancement as a BasicSR plug-in.

``pip install -e ".[test]"`` (or ``pip install .``). basicsr 1.4.2 is an sdist whose build imports
torch: with torch installed first, ``pip install --no-build-isolation basicsr`` takes seconds
(the Makefile does this); plain pip also works but builds it against a freshly downloaded torch.

Both install kinds also put ``gmmoe_basicsr_hook.pth`` into site-packages, so that a plain ``import basicsr``
works and finds GM-MoE (see gmmoe_basicsr_hook.py and docs/pipelines.md); ``pip uninstall`` removes it.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HOOK_PTH = 'gmmoe_basicsr_hook.pth'
# What the .pth line runs at every start-up. Guarded: when the module is gone (an editable install whose source
# tree was moved or deleted) Python would print a traceback at every start; instead one line, once per process
# tree (children inherit GMMOE_HOOK_WARNED).
HOOK_START = (
    'try:\n'
    '    import gmmoe_basicsr_hook\n'
    '    gmmoe_basicsr_hook.install()\n'
    'except Exception as exc:\n'
    '    if not os.environ.get("GMMOE_HOOK_WARNED"):\n'
    '        os.environ["GMMOE_HOOK_WARNED"] = "1"\n'
    '        print(f"gmmoe: the start-up hook gmmoe_basicsr_hook.pth in {sys.prefix} is inactive ({exc}); if the "\n'
    '              "gmmoe source was moved or deleted, reinstall gmmoe or pip uninstall gmmoe", file=sys.stderr)\n'
)
HOOK_PTH_LINE = f'import os, sys; exec({HOOK_START!r})\n'  # .pth files run only lines that start with "import"


class BuildPyWithHook(build_py):
    """build_py that also writes the hook's .pth into the root of build_lib, i.e. of the wheel and site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:  # an editable wheel is not assembled from build_lib: see EditableWheelWithHook
            with open(os.path.join(self.build_lib, HOOK_PTH), 'w', encoding='utf-8') as f:
                f.write(HOOK_PTH_LINE)


class EditableWheelWithHook(editable_wheel):
    """editable_wheel that adds the hook's .pth to the wheel beside the files of setuptools' editable strategy.

    The strategy (setuptools >= 64, private ``_select_strategy``) writes ``__editable__.gmmoe-*.pth``, which
    Python processes before ours (.pth files run in name order), so ``import gmmoe_basicsr_hook`` in our line
    finds the module in the source tree. tests/test_plugin_hook.py checks both install kinds.
    """

    def _select_strategy(self, *args, **kwargs):
        return StrategyWithHook(super()._select_strategy(*args, **kwargs))


class StrategyWithHook:
    """Wraps an editable strategy: writes what it writes, then the hook's .pth."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self.strategy.__exit__(*exc_info)

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(HOOK_PTH, HOOK_PTH_LINE)


EXPORT_REQUIRES = ['onnx>=1.17', 'onnxscript>=0.5', 'onnxruntime>=1.20']
SPANDREL_REQUIRES = ['spandrel>=0.4']


setup(
    name='gmmoe',
    version='0.1.0',
    description='GM-MoE low-light image enhancement (ICCV 2025) as a BasicSR plug-in',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['gmmoe_arch', 'gmmoe_arch.*', 'datasets_lmdb', 'datasets_lmdb.*']),
    py_modules=['gmmoe_basicsr_hook', 'gmmoe_console'],
    cmdclass={'build_py': BuildPyWithHook, 'editable_wheel': EditableWheelWithHook},
    install_requires=[
        'torch>=2.6',  # weights_only loading by default, torch.serialization.safe_globals, torch.compiler.is_exporting
        'torchvision>=0.21',
        'basicsr>=1.4.2',
        'numpy',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'tqdm',
        'pillow',
        'scikit-image',
    ],
    extras_require={
        # `gmmoe export` (ONNX): onnxscript and onnx for torch's exporter, onnxruntime for the check
        'export': EXPORT_REQUIRES,
        # spandrel.ModelLoader loads GM-MoE checkpoints (gmmoe_arch.spandrel_arch)
        'spandrel': SPANDREL_REQUIRES,
        'test': ['pytest>=7', 'ruff>=0.6', 'hypothesis>=6'] + EXPORT_REQUIRES + SPANDREL_REQUIRES,
    },
    entry_points={
        'console_scripts': [
            'basicsr = gmmoe_arch.cli:main',
            'gmmoe = gmmoe_console:main',  # parses before importing torch: usage errors at once
            'datasets_lmdb = datasets_lmdb.__main__:main',
        ],
        'basicsr.plugins': ['gmmoe = gmmoe_arch'],
    },
)
