"""The start-up hook (gmmoe_basicsr_hook.py + gmmoe_basicsr_hook.pth) and GM-MoE as a neighbour of other projects.

Each check runs a fresh interpreter of a scratch venv into which this checkout is installed (regular or editable,
built once per session; this environment's torch and basicsr reached through a plain path entry), with a clean
environment (no PYTHONPATH, no GMMOE_* variables) in a tmp directory, so only what pip installed is in play:
upstream ``python -m basicsr.train`` / ``python -m basicsr.test``, a Real-ESRGAN-shaped ``train.py``, registry
misses filled from ``basicsr.plugins``, a project with its own ``PSNRLoss`` (the issue's ``myproj``), programs
using ``torchvision.transforms.functional_tensor``, start-up without torch, a moved source, and the install and
uninstall themselves.
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

from helpers import REPO, TINY_PLUGIN, tiny_gmmoe_options, tiny_train_options, write_pairs, write_yaml

SITE_PACKAGES = Path(sysconfig.get_paths()['purelib'])  # this environment's: torch and basicsr live here
HOOK_PTH = 'gmmoe_basicsr_hook.pth'
KINDS = ['regular', 'editable']
GMMOE_NAMES = {  # every name GM-MoE registers, by BasicSR registry
    'ARCH_REGISTRY': ['GMMoE', 'OURNet24'],
    'DATASET_REGISTRY': ['LLIEPairedDataset', 'MixedPairedDataset'],
    'LOSS_REGISTRY': ['PSNRLoss', 'GateRoutingLoss', 'GateBalanceLoss', 'GateLoadLoss', 'CostWeightedBalanceLoss'],
    'METRIC_REGISTRY': ['calculate_psnr_gt_mean', 'calculate_psnr_released', 'calculate_ssim_released'],
    'MODEL_REGISTRY': ['GMMoEModel'],
}

pytestmark = pytest.mark.slow  # interpreters, installs and training runs in subprocesses


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PYTHON', 'GMMOE'))}
    env['OMP_NUM_THREADS'] = '1'
    env.update(extra)
    return env


def run_python(args, cwd, python=sys.executable, timeout=300, env=None, check=True):
    done = subprocess.run(
        [str(python)] + args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, f'{args}: rc {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}'
    return done


def last_json(done):
    return json.loads(done.stdout.strip().splitlines()[-1])


class ScratchVenv:
    """A venv holding an install of a copy of this checkout; this environment's packages on a plain path entry."""

    def __init__(self, root, editable):
        self.source = root / 'src'
        self.source.mkdir(parents=True)
        for name in ('setup.py', 'README.md', 'gmmoe_basicsr_hook.py', 'gmmoe_console.py'):
            shutil.copy(REPO / name, self.source / name)
        for package in ('gmmoe_arch', 'datasets_lmdb'):
            shutil.copytree(REPO / package, self.source / package, ignore=shutil.ignore_patterns('__pycache__'))
        venv = root / 'venv'
        run_python(['-m', 'venv', '--without-pip', str(venv)], root)
        self.python = venv / 'bin' / 'python'
        purelib = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
        self.site = Path(run_python(['-c', purelib], root, python=self.python).stdout.strip())
        # this environment's packages (torch, basicsr, setuptools) as a plain path entry: its .pth files stay unread
        self.base = self.site / 'base_env.pth'
        self.base.write_text(f'{SITE_PACKAGES}\n')
        self.pip = ['-m', 'pip', '--python', str(self.python)]
        flags = ['install', '-q', '--no-deps', '--no-build-isolation'] + (['-e'] if editable else [])
        run_python(self.pip + flags + [str(self.source)], root)

    def run(self, args, cwd, **kwargs):
        return run_python(args, cwd, python=self.python, **kwargs)


@pytest.fixture(scope='session')
def scratch(tmp_path_factory):
    """``scratch(kind) -> ScratchVenv`` for kind ``'regular'`` or ``'editable'``, each built once per session."""
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = ScratchVenv(tmp_path_factory.mktemp(f'venv_{kind}'), editable=kind == 'editable')
        return made[kind]

    return get


@pytest.fixture
def venv(scratch):
    """The regular install."""
    return scratch('regular')


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


def test_interpreter_start_installs_the_finder_without_importing_torch(tmp_path, venv):
    code = (
        "import sys, json; print(json.dumps({'finders': [type(f).__name__ for f in sys.meta_path], "
        "'torch': 'torch' in sys.modules, 'basicsr': 'basicsr' in sys.modules}))"
    )
    start = last_json(venv.run(['-c', code], tmp_path))
    assert start['finders'][0] == 'BasicsrHookFinder'
    assert not start['torch'] and not start['basicsr']


REGISTRY_CHECK = f"""
import json, sys
import basicsr
from basicsr.utils import registry as r

NAMES = {GMMOE_NAMES!r}


def present():
    return sorted(n for reg, names in NAMES.items() for n in names if n in getattr(r, reg))


def get(registry, name):
    try:
        return registry.get(name).__module__
    except KeyError as exc:
        return 'KeyError ' + str(exc)


compat = sys.modules.get('gmmoe_arch.compat')
out = {{'package': 'gmmoe_arch' in sys.modules, 'applied': compat.APPLIED if compat else None,
       'before': present(), 'loader': type(basicsr.__loader__).__name__}}
try:
    import torchvision.transforms.functional_tensor
    out['functional_tensor'] = 'imported'
except ModuleNotFoundError as exc:
    out['functional_tensor'] = 'missing ' + exc.name
out['tiny'] = get(r.ARCH_REGISTRY, 'TinyPlugNet')
out['miss'] = get(r.ARCH_REGISTRY, 'NoSuchNet')
out['after'] = present()
out['qualified'] = sorted(n for n, _ in r.LOSS_REGISTRY if n.endswith('_gmmoe'))
print(json.dumps(out))
"""


def write_plugins(root):
    """``tinyplug`` (TinyPlugNet) and ``brokenplug`` (its module missing) as ``basicsr.plugins`` entry points."""
    (root / 'tinyplug').mkdir()
    (root / 'tinyplug' / '__init__.py').write_text(TINY_PLUGIN)
    for name, target in (('tinyplug', 'tinyplug'), ('brokenplug', 'brokenplug_no_such_module')):
        info = root / f'{name}-0.1.dist-info'
        info.mkdir()
        (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n')
        (info / 'entry_points.txt').write_text(f'[basicsr.plugins]\n{name} = {target}\n')


def test_plain_import_basicsr_patches_registers_nothing_and_a_miss_loads_plugins(tmp_path, venv):
    """``import basicsr`` alone: patched, nothing of GM-MoE registered, functional_tensor missing as upstream;
    a miss imports the plug-ins (GM-MoE among them; a broken one warns)."""
    write_plugins(tmp_path)
    done = venv.run(['-c', REGISTRY_CHECK], tmp_path)
    result = last_json(done)
    assert result['package'] is False and result['before'] == []
    assert {'functional_tensor', 'load_resume_state', 'message logger eta'} <= set(result['applied'])
    assert result['functional_tensor'] == 'missing torchvision.transforms.functional_tensor'
    assert result['tiny'] == 'tinyplug'
    assert result['after'] == sorted(n for names in GMMOE_NAMES.values() for n in names)
    assert result['qualified'] == sorted(f'{n}_gmmoe' for n in GMMOE_NAMES['LOSS_REGISTRY'])
    assert "KeyError \"No object named 'NoSuchNet'" in result['miss'] and 'tinyplug' in result['miss']
    assert result['loader'] == 'SourceFileLoader'
    assert 'basicsr plug-in "brokenplug"' in done.stderr and 'brokenplug_no_such_module' in done.stderr
    assert 'Name TinyPlugNet is not found' not in done.stdout  # the plug-ins are asked before upstream's fallback


def test_patches_only_switch_never_loads_gmmoe(tmp_path, venv):
    """``GMMOE_BASICSR_HOOK=patches``: the compat patches, no plug-in loading on a miss; ``=0``: nothing at all."""
    write_plugins(tmp_path)
    result = last_json(venv.run(['-c', REGISTRY_CHECK], tmp_path, env=clean_env(GMMOE_BASICSR_HOOK='patches')))
    assert 'load_resume_state' in result['applied'] and result['package'] is False
    assert result['after'] == [] and result['qualified'] == []
    assert result['tiny'] == "KeyError \"No object named 'TinyPlugNet' found in 'arch' registry!\""
    off = venv.run(['-c', 'import basicsr'], tmp_path, env=clean_env(GMMOE_BASICSR_HOOK='0'), check=False)
    assert off.returncode == 1 and "No module named 'torchvision.transforms.functional_tensor'" in off.stderr


def remove_with_empty_parent(path):
    shutil.rmtree(path, ignore_errors=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def test_upstream_train_and_test_modules_run_gmmoe(tmp_path, venv):
    """``python -m basicsr.train`` / ``basicsr.test``: root_path is site-packages, so the folders land there."""
    data = write_pairs(tmp_path / 'data', n=3, size=(40, 36))
    name = f'gmmoe_hook_test_{uuid.uuid4().hex[:8]}'
    exp, results = SITE_PACKAGES / 'experiments' / name, SITE_PACKAGES / 'results' / f'{name}_test'
    try:
        train = write_yaml(tmp_path / 'train.yml', tiny_gmmoe_options(data, name, total_iter=2, checkpoint_freq=2))
        venv.run(['-m', 'basicsr.train', '-opt', str(train)], tmp_path)
        weights = exp / 'models' / 'net_g_2.pth'
        assert weights.is_file() and (exp / 'training_states' / '2.state').is_file()
        log = next(exp.glob(f'train_{name}_*.log')).read_text()
        assert 'Network [GMMoE] is created' in log and 'Model [GMMoEModel] is created' in log

        test = write_yaml(tmp_path / 'test.yml', tiny_gmmoe_test_options(data, f'{name}_test', weights))
        venv.run(['-m', 'basicsr.test', '-opt', str(test)], tmp_path)
        log = next(results.glob(f'test_{name}_test_*.log')).read_text()
        assert 5 < float(log.split('# psnr: ')[1].split()[0]) < 60
        assert not (tmp_path / 'experiments').exists()
    finally:
        remove_with_empty_parent(exp)
        remove_with_empty_parent(results)


REALESRGAN_SHAPED_TRAIN = """
import json
import os.path as osp
import sys

import basicsr.train

import {package}  # noqa: F401  (its own names, registered on import, as Real-ESRGAN's and NAFNet's train.py do)

if __name__ == '__main__':
    print('load_resume_state from', basicsr.train.load_resume_state.__module__)
    basicsr.train.train_pipeline(osp.abspath(osp.dirname(__file__)))
    from basicsr.utils.registry import LOSS_REGISTRY

    loss = LOSS_REGISTRY.get('PSNRLoss') if 'PSNRLoss' in LOSS_REGISTRY else None
    print(json.dumps({{'gmmoe_arch': 'gmmoe_arch' in sys.modules, 'PSNRLoss': getattr(loss, '__module__', None),
                      'PSNRLoss_gmmoe': 'PSNRLoss_gmmoe' in LOSS_REGISTRY}}))
"""


def test_third_party_train_script_that_imports_basicsr_first(tmp_path, venv):
    data = write_pairs(tmp_path / 'data', n=3, size=(40, 36))
    (tmp_path / 'myproject').mkdir()
    (tmp_path / 'myproject' / '__init__.py').write_text('from basicsr.utils.registry import ARCH_REGISTRY\n')
    (tmp_path / 'train.py').write_text(REALESRGAN_SHAPED_TRAIN.format(package='myproject'))
    opt = write_yaml(tmp_path / 'tiny.yml', tiny_gmmoe_options(data, 'tiny', total_iter=2, checkpoint_freq=2))
    done = venv.run(['train.py', '-opt', str(opt)], tmp_path)
    assert 'load_resume_state from gmmoe_arch.compat' in done.stdout
    assert (tmp_path / 'experiments' / 'tiny' / 'models' / 'net_g_2.pth').is_file()


# The myproj: a NAFNet-style project registering its own PSNRLoss (and a network) in BasicSR's registries.
MYPROJ_PSNR_LOSS = """
import math

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn


@LOSS_REGISTRY.register()
class PSNRLoss(nn.Module):
    def __init__(self, loss_weight=1.0, reduction='mean', toY=False):
        super().__init__()
        self.scale = loss_weight * 10 / math.log(10)
        print('myproj PSNRLoss created', flush=True)

    def forward(self, pred, target, **kwargs):
        return self.scale * torch.log(((pred - target) ** 2).mean(dim=(1, 2, 3)) + 1e-8).mean()
"""


def write_myproj(root):
    (root / 'myproj').mkdir()
    (root / 'myproj' / '__init__.py').write_text('from . import psnr_loss, tiny_arch  # noqa: F401\n')
    (root / 'myproj' / 'psnr_loss.py').write_text(MYPROJ_PSNR_LOSS)
    (root / 'myproj' / 'tiny_arch.py').write_text(TINY_PLUGIN)
    (root / 'train.py').write_text(REALESRGAN_SHAPED_TRAIN.format(package='myproj'))


def log_of(root, name):
    return next((root / 'experiments' / name).glob(f'train_{name}_*.log')).read_text()


def test_a_project_with_its_own_psnr_loss_trains_as_without_gmmoe(tmp_path, venv):
    """myproj's train.py, its PSNRLoss and network, BasicSR's dataset and model: GM-MoE is never imported."""
    write_myproj(tmp_path)
    data = write_pairs(tmp_path / 'data', n=3, size=(40, 36))
    opt = tiny_train_options(data, 'own', total_iter=2, checkpoint_freq=2)
    opt['train']['pixel_opt'] = {'type': 'PSNRLoss', 'loss_weight': 1.0}
    done = venv.run(['train.py', '-opt', str(write_yaml(tmp_path / 'own.yml', opt))], tmp_path)
    assert last_json(done) == {'gmmoe_arch': False, 'PSNRLoss': 'myproj.psnr_loss', 'PSNRLoss_gmmoe': False}
    assert 'myproj PSNRLoss created' in done.stdout and 'gmmoe: ' not in done.stderr
    assert (tmp_path / 'experiments' / 'own' / 'models' / 'net_g_2.pth').is_file()
    log = log_of(tmp_path, 'own')
    assert 'Network [TinyPlugNet] is created' in log and 'l_pix: ' in log


@pytest.mark.parametrize('kind', KINDS)
def test_their_psnr_loss_and_gmmoe_in_one_option_file(tmp_path, scratch, kind):
    """myproj's train.py with GMMoE, GMMoEModel, LLIEPairedDataset and PSNRLoss: the network comes from GM-MoE
    (a registry miss loads it), the loss is theirs, one line says so."""
    write_myproj(tmp_path)
    data = write_pairs(tmp_path / 'data', n=3, size=(40, 36))
    opt = write_yaml(tmp_path / 'mixed.yml', tiny_gmmoe_options(data, 'mixed', total_iter=2, checkpoint_freq=2))
    done = scratch(kind).run(['train.py', '-opt', str(opt)], tmp_path)
    assert last_json(done) == {'gmmoe_arch': True, 'PSNRLoss': 'myproj.psnr_loss', 'PSNRLoss_gmmoe': True}
    assert 'myproj PSNRLoss created' in done.stdout
    said = [line for line in done.stderr.splitlines() if 'PSNRLoss_gmmoe' in line]
    assert len(said) == 1 and 'myproj.psnr_loss.PSNRLoss' in said[0], done.stderr[-2000:]
    log = log_of(tmp_path, 'mixed')
    assert 'Network [GMMoE] is created' in log and 'Model [GMMoEModel] is created' in log


IMPORT_ORDER = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
from basicsr.utils.registry import LOSS_REGISTRY
print(json.dumps({n: LOSS_REGISTRY.get(n).__module__ for n in ('PSNRLoss', 'PSNRLoss_gmmoe')}))
"""


@pytest.mark.parametrize('kind', KINDS)
def test_import_gmmoe_arch_before_or_after_myproj(tmp_path, scratch, kind):
    """Either order imports; the plain name is myproj's, GM-MoE's is ``PSNRLoss_gmmoe``; one line says which."""
    write_myproj(tmp_path)
    expected = {'PSNRLoss': 'myproj.psnr_loss', 'PSNRLoss_gmmoe': 'gmmoe_arch.losses.psnr_loss'}
    after = scratch(kind).run(['-c', IMPORT_ORDER, 'myproj.psnr_loss', 'gmmoe_arch'], tmp_path)
    assert last_json(after) == expected
    assert after.stderr.strip() == (
        "gmmoe: 'PSNRLoss' in BasicSR's loss registry stays myproj.psnr_loss.PSNRLoss; "
        "GM-MoE's PSNRLoss is registered as 'PSNRLoss_gmmoe' only"
    )
    before = scratch(kind).run(['-c', IMPORT_ORDER, 'gmmoe_arch', 'myproj.psnr_loss'], tmp_path)
    assert last_json(before) == expected
    assert before.stderr.strip() == (
        "gmmoe: 'PSNRLoss' in BasicSR's loss registry is now myproj.psnr_loss.PSNRLoss; "
        "GM-MoE's PSNRLoss stays available as 'PSNRLoss_gmmoe'"
    )


# A program in the style of pytorchvideo 0.1.5's augmentations: the old module, else torchvision's renamed one.
FUNCTIONAL_TENSOR_USER = """
import json, sys
if sys.argv[1:] == ['basicsr']:
    import basicsr
    from basicsr.data import degradations
    from torchvision.transforms import functional
    assert degradations.rgb_to_grayscale is functional.rgb_to_grayscale
import torch
try:
    import torchvision.transforms.functional_tensor as F_t
    source = 'functional_tensor'
except ImportError:
    from torchvision.transforms import _functional_tensor as F_t
    source = '_functional_tensor'
img = torch.linspace(0, 1, 48).reshape(3, 4, 4)
out = {'source': source, 'brightness': F_t.adjust_brightness(img, 1.5).sum().item(),
       'gray': F_t.rgb_to_grayscale(img).sum().item(), 'names': len(dir(F_t))}
print(json.dumps(out))
"""


def test_functional_tensor_users_see_torchvision_as_without_gmmoe(tmp_path, venv):
    """With the hook, without it (``GMMOE_BASICSR_HOOK=0``), and after ``import basicsr``: the same module."""
    without = last_json(venv.run(['-c', FUNCTIONAL_TENSOR_USER], tmp_path, env=clean_env(GMMOE_BASICSR_HOOK='0')))
    assert last_json(venv.run(['-c', FUNCTIONAL_TENSOR_USER], tmp_path)) == without
    assert last_json(venv.run(['-c', FUNCTIONAL_TENSOR_USER, 'basicsr'], tmp_path)) == without
    import torchvision

    if tuple(int(p) for p in torchvision.__version__.split('.')[:2]) >= (0, 17):
        assert without['source'] == '_functional_tensor'


SCRATCH_CHECK = """
import json, sys
import gmmoe_basicsr_hook
print(json.dumps({'hook': gmmoe_basicsr_hook.__file__,
                  'finder': any(type(f).__name__ == 'BasicsrHookFinder' for f in sys.meta_path)}))
"""

# a program that starts a child interpreter: a broken hook must say so once for the two
PARENT_AND_CHILD = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'print(2)'], check=True); print(1)"


@pytest.mark.parametrize('editable', [False, True], ids=KINDS)
def test_install_and_uninstall_in_a_scratch_venv(tmp_path, editable):
    """pip puts the .pth and the hook module into site-packages and records them; a moved source warns in one
    line, without a traceback; pip removes both again."""
    venv = ScratchVenv(tmp_path, editable)
    site = venv.site
    (site / 'unrelated.txt').write_text('keeps site-packages from being emptied by the uninstall\n')

    pth = (site / HOOK_PTH).read_text()
    assert pth.startswith('import ') and pth.count('\n') == 1 and 'gmmoe_basicsr_hook.install()' in pth
    record = next(site.glob('gmmoe-*.dist-info')).joinpath('RECORD').read_text()
    assert HOOK_PTH in record and ('gmmoe_basicsr_hook.py' in record) != editable
    found = last_json(venv.run(['-c', SCRATCH_CHECK], tmp_path))
    assert found['finder']
    assert Path(found['hook']).parent == (venv.source if editable else site)
    if not editable:  # the full path once: gmmoe_arch comes from the scratch install
        code = (
            'import basicsr, gmmoe_arch; from basicsr.utils.registry import ARCH_REGISTRY; '
            "print(gmmoe_arch.__file__, 'GMMoE' in ARCH_REGISTRY)"
        )
        out = venv.run(['-c', code], tmp_path).stdout.split()
        assert Path(out[-2]).is_relative_to(site) and out[-1] == 'True'

    Path(found['hook']).rename(tmp_path / 'moved_hook.py')  # the source moved away (or the module deleted)
    broken = venv.run(['-c', PARENT_AND_CHILD], tmp_path)
    assert broken.stdout.split() == ['2', '1']
    assert len(broken.stderr.splitlines()) == 1 and 'Traceback' not in broken.stderr, broken.stderr
    assert broken.stderr.startswith('gmmoe: the start-up hook gmmoe_basicsr_hook.pth in ')
    assert "No module named 'gmmoe_basicsr_hook'" in broken.stderr and 'pip uninstall gmmoe' in broken.stderr

    venv.base.unlink()  # so that pip sees only the scratch install
    run_python(venv.pip + ['uninstall', '-y', '-q', 'gmmoe'], tmp_path)
    left = sorted(p.name for p in site.iterdir() if p.name != '__pycache__')
    assert left == ['unrelated.txt']
    done = venv.run(['-c', 'import sys; print([type(f).__name__ for f in sys.meta_path])'], tmp_path)
    assert 'BasicsrHookFinder' not in done.stdout and not done.stderr
