"""The start-up hook (gmmoe_basicsr_hook.py + gmmoe_basicsr_hook.pth): programs that import basicsr first.

Each check runs a fresh interpreter of this environment with a clean environment (no PYTHONPATH, no GMMOE_*
variables) in a tmp directory, so only what pip installed is in play: upstream ``python -m basicsr.train`` /
``python -m basicsr.test``, a Real-ESRGAN-shaped ``train.py``, registry misses filled from ``basicsr.plugins``,
start-up without torch, and a regular and an editable install into a scratch venv, then uninstalled.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from helpers import REPO, TINY_PLUGIN, tiny_gmmoe_options, write_pairs, write_yaml

SITE_PACKAGES = Path(sysconfig.get_paths()['purelib'])
HOOK_PTH = 'gmmoe_basicsr_hook.pth'

pytestmark = pytest.mark.slow  # interpreters, installs and training runs in subprocesses


@pytest.fixture(scope='module', autouse=True)
def hook_installed():
    assert (SITE_PACKAGES / HOOK_PTH).is_file(), (
        f'{HOOK_PTH} not in {SITE_PACKAGES}: reinstall the package (make install, or pip install -e .)'
    )


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTHON', 'GMMOE'))}
    env['OMP_NUM_THREADS'] = '1'
    return env


def run_python(args, cwd, python=sys.executable, timeout=300):
    done = subprocess.run(
        [str(python)] + args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f'{args}: rc {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}'
    return done


def tiny_gmmoe_test_options(data, name, weights):
    train = tiny_gmmoe_options(data, name, total_iter=2, checkpoint_freq=2)
    dataset = dict(train['datasets']['train'], name='tiny_test')
    return {
        'name': name,
        'model_type': 'GMMoEModel',
        'num_gpu': 0,
        'network_g': train['network_g'],
        'datasets': {'test_1': {k: dataset[k] for k in ('name', 'type', 'dataroot_lq', 'dataroot_gt', 'io_backend')}},
        'path': {'pretrain_network_g': str(weights), 'strict_load_g': True},
        'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}},
    }


def test_interpreter_start_installs_the_finder_without_importing_torch(tmp_path):
    code = (
        "import sys, json; print(json.dumps({'finders': [type(f).__name__ for f in sys.meta_path], "
        "'torch': 'torch' in sys.modules, 'basicsr': 'basicsr' in sys.modules}))"
    )
    start = json.loads(run_python(['-c', code], tmp_path).stdout)
    assert start['finders'][0] == 'BasicsrHookFinder'
    assert not start['torch'] and not start['basicsr']


REGISTRY_CHECK = """
import json
import basicsr
import torchvision.transforms.functional_tensor as ft
from basicsr.utils import registry as r

found = {name: name in registry for name, registry in (
    ('GMMoE', r.ARCH_REGISTRY), ('LLIEPairedDataset', r.DATASET_REGISTRY), ('PSNRLoss', r.LOSS_REGISTRY),
    ('GMMoEModel', r.MODEL_REGISTRY), ('calculate_psnr_gt_mean', r.METRIC_REGISTRY))}
before = 'TinyPlugNet' in r.ARCH_REGISTRY
tiny = r.ARCH_REGISTRY.get('TinyPlugNet').__module__
try:
    r.ARCH_REGISTRY.get('NoSuchNet')
    miss = None
except KeyError as exc:
    miss = str(exc)
print(json.dumps({'found': found, 'before': before, 'tiny': tiny, 'miss': miss,
                  'grayscale': callable(ft.rgb_to_grayscale), 'loader': type(basicsr.__loader__).__name__}))
"""


def test_plain_import_basicsr_registers_gmmoe_and_a_miss_loads_plugins(tmp_path):
    """``import basicsr`` alone: GM-MoE registered; a miss imports the other plug-ins (a broken one warns)."""
    (tmp_path / 'tinyplug').mkdir()
    (tmp_path / 'tinyplug' / '__init__.py').write_text(TINY_PLUGIN)
    for name, target in (('tinyplug', 'tinyplug'), ('brokenplug', 'brokenplug_no_such_module')):
        info = tmp_path / f'{name}-0.1.dist-info'
        info.mkdir()
        (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n')
        (info / 'entry_points.txt').write_text(f'[basicsr.plugins]\n{name} = {target}\n')

    done = run_python(['-c', REGISTRY_CHECK], tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(result['found'].values()), result['found']
    assert result['grayscale']
    assert result['before'] is False and result['tiny'] == 'tinyplug'
    assert "'NoSuchNet'" in result['miss'] and 'tinyplug' in result['miss']
    assert result['loader'] == 'SourceFileLoader'
    assert 'basicsr plug-in "brokenplug"' in done.stderr and 'brokenplug_no_such_module' in done.stderr


def remove_with_empty_parent(path):
    shutil.rmtree(path, ignore_errors=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def test_upstream_train_and_test_modules_run_gmmoe(tmp_path):
    """``python -m basicsr.train`` / ``basicsr.test``: root_path is site-packages, so the folders land there."""
    data = write_pairs(tmp_path / 'data', n=3, size=(40, 36))
    name = f'gmmoe_hook_test_{uuid.uuid4().hex[:8]}'
    exp, results = SITE_PACKAGES / 'experiments' / name, SITE_PACKAGES / 'results' / f'{name}_test'
    try:
        train = write_yaml(tmp_path / 'train.yml', tiny_gmmoe_options(data, name, total_iter=2, checkpoint_freq=2))
        run_python(['-m', 'basicsr.train', '-opt', str(train)], tmp_path)
        weights = exp / 'models' / 'net_g_2.pth'
        assert weights.is_file() and (exp / 'training_states' / '2.state').is_file()
        log = next(exp.glob(f'train_{name}_*.log')).read_text()
        assert 'Network [GMMoE] is created' in log and 'Model [GMMoEModel] is created' in log

        test = write_yaml(tmp_path / 'test.yml', tiny_gmmoe_test_options(data, f'{name}_test', weights))
        run_python(['-m', 'basicsr.test', '-opt', str(test)], tmp_path)
        log = next(results.glob(f'test_{name}_test_*.log')).read_text()
        assert 5 < float(log.split('# psnr: ')[1].split()[0]) < 60
        assert not (tmp_path / 'experiments').exists()
    finally:
        remove_with_empty_parent(exp)
        remove_with_empty_parent(results)


REALESRGAN_SHAPED_TRAIN = """
import os.path as osp

import basicsr.train

import myproject  # noqa: F401  (its own archs, registered on import, as Real-ESRGAN's train.py does)

if __name__ == '__main__':
    print('load_resume_state from', basicsr.train.load_resume_state.__module__)
    basicsr.train.train_pipeline(osp.abspath(osp.dirname(__file__)))
"""


def test_third_party_train_script_that_imports_basicsr_first(tmp_path):
    data = write_pairs(tmp_path / 'data', n=3, size=(40, 36))
    (tmp_path / 'myproject').mkdir()
    (tmp_path / 'myproject' / '__init__.py').write_text('from basicsr.utils.registry import ARCH_REGISTRY\n')
    (tmp_path / 'train.py').write_text(REALESRGAN_SHAPED_TRAIN)
    opt = write_yaml(tmp_path / 'tiny.yml', tiny_gmmoe_options(data, 'tiny', total_iter=2, checkpoint_freq=2))
    done = run_python(['train.py', '-opt', str(opt)], tmp_path)
    assert 'load_resume_state from gmmoe_arch.compat' in done.stdout
    assert (tmp_path / 'experiments' / 'tiny' / 'models' / 'net_g_2.pth').is_file()


SCRATCH_CHECK = """
import json, sys
import gmmoe_basicsr_hook
print(json.dumps({'hook': gmmoe_basicsr_hook.__file__,
                  'finder': any(type(f).__name__ == 'BasicsrHookFinder' for f in sys.meta_path)}))
"""


@pytest.mark.parametrize('editable', [False, True], ids=['regular', 'editable'])
def test_install_and_uninstall_in_a_scratch_venv(tmp_path, editable):
    """pip puts the .pth and the hook module into site-packages, records them, and removes them again."""
    source = tmp_path / 'src'
    source.mkdir()
    for name in ('setup.py', 'README.md', 'gmmoe_basicsr_hook.py'):
        shutil.copy(REPO / name, source / name)
    for package in ('gmmoe_arch', 'datasets_lmdb'):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns('__pycache__'))
    venv = tmp_path / 'venv'
    run_python(['-m', 'venv', '--without-pip', str(venv)], tmp_path)
    python = venv / 'bin' / 'python'
    site = Path(
        run_python(
            ['-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], tmp_path, python=python
        ).stdout.strip()
    )
    # this environment's packages (torch, basicsr, setuptools) as a plain path entry: its .pth files stay unread
    base = site / 'base_env.pth'
    base.write_text(f'{SITE_PACKAGES}\n')
    (site / 'unrelated.txt').write_text('keeps site-packages from being emptied by the uninstall\n')
    pip = ['-m', 'pip', '--python', str(python)]
    run_python(
        pip + ['install', '-q', '--no-deps', '--no-build-isolation'] + (['-e'] if editable else []) + [str(source)],
        tmp_path,
    )

    assert (site / HOOK_PTH).read_text() == 'import gmmoe_basicsr_hook; gmmoe_basicsr_hook.install()\n'
    record = next(site.glob('gmmoe-*.dist-info')).joinpath('RECORD').read_text()
    assert HOOK_PTH in record and ('gmmoe_basicsr_hook.py' in record) != editable
    found = json.loads(run_python(['-c', SCRATCH_CHECK], tmp_path, python=python).stdout.strip().splitlines()[-1])
    assert found['finder']
    assert Path(found['hook']).parent == (source if editable else site)
    if not editable:  # the full path once: a plain import basicsr in the scratch venv registers GM-MoE from it
        code = (
            'import basicsr, gmmoe_arch; from basicsr.utils.registry import ARCH_REGISTRY; '
            "print(gmmoe_arch.__file__, 'GMMoE' in ARCH_REGISTRY)"
        )
        out = run_python(['-c', code], tmp_path, python=python).stdout.split()
        assert Path(out[-2]).is_relative_to(site) and out[-1] == 'True'

    base.unlink()  # so that pip sees only the scratch install
    run_python(pip + ['uninstall', '-y', '-q', 'gmmoe'], tmp_path)
    left = sorted(p.name for p in site.iterdir() if p.name != '__pycache__')
    assert left == ['unrelated.txt']
    found = run_python(
        ['-c', 'import sys; print([type(f).__name__ for f in sys.meta_path])'], tmp_path, python=python
    ).stdout
    assert 'BasicsrHookFinder' not in found
