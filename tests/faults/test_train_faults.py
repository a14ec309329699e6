"""Faults during ``basicsr train`` / ``basicsr test``: full disk, damaged checkpoints, hostile pickles, bad options."""

import errno
import os

import pytest
import torch
import yaml

from gmmoe_arch import cli, compat

from helpers import run_basicsr, tiny_gmmoe_options, tiny_test_options, write_pairs, write_yaml


def train(tmp_path, env, options, *extra, cwd=None):
    opt = write_yaml(tmp_path / f'{options["name"]}.yml', options)
    return run_basicsr(['train', '-opt', str(opt), *extra], cwd or tmp_path, env)


@pytest.mark.slow
def test_disk_full_during_training_stops_with_an_error(tmp_path, small_disk, plugin_env):
    # 160 KB hold the log and the option file, not the first 238 KB network checkpoint.
    disk = small_disk(160 * 1024)
    data = write_pairs(tmp_path / 'data', n=4)
    done = train(tmp_path, plugin_env, tiny_gmmoe_options(data, 'full', total_iter=4, checkpoint_freq=2), cwd=disk)
    assert done.returncode == 1, done.stderr[-2000:]
    assert 'cannot write network checkpoint' in done.stderr and 'No space left on device' in done.stderr
    assert 'Traceback' not in done.stderr
    exp = disk / 'experiments' / 'full'
    assert os.listdir(exp / 'models') == [] and os.listdir(exp / 'training_states') == []  # no partial file left
    assert 'End of training' not in ''.join(p.read_text() for p in exp.glob('*.log'))


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'net_g_latest.pth'
    compat.atomic_torch_save({'params': {'w': torch.ones(3)}}, path)
    before = path.read_bytes()

    def fill_disk(obj, f):
        f.write(b'PK\x03\x04 half a checkpoint')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, 'save', fill_disk)
    with pytest.raises(compat.CheckpointWriteError, match='cannot write network checkpoint .*No space left'):
        compat.save_checkpoint({'params': {}}, str(path), 'network checkpoint')
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['net_g_latest.pth']


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_intact_pair(tmp_path, plugin_env):
    data = write_pairs(tmp_path / 'data', n=4)
    options = tiny_gmmoe_options(data, 'resume', total_iter=4, checkpoint_freq=2)
    options['train']['scheduler']['periods'] = [6]  # the resumed run goes on to 6
    assert train(tmp_path, plugin_env, options).returncode == 0
    exp = tmp_path / 'experiments' / 'resume'
    newest = exp / 'models' / 'net_g_4.pth'
    newest.write_bytes(newest.read_bytes()[:5000])  # as a kill or a full disk under upstream left it
    options['train']['total_iter'] = 6
    done = train(tmp_path, plugin_env, options, '--auto_resume')
    assert done.returncode == 0, done.stderr[-3000:]
    assert f'skipping iteration 4: {newest} missing or damaged' in done.stdout
    log = max(exp.glob('train_resume_*.log'), key=lambda p: p.stat().st_mtime).read_text()
    assert 'iter: 2.' in log.split('Resuming training from epoch')[1].splitlines()[0]
    assert 'iter:       6,' in log and (exp / 'models' / 'net_g_6.pth').is_file()


def last_log(exp, name):
    return max(exp.glob(f'train_{name}_*.log'), key=lambda p: p.stat().st_mtime).read_text()


@pytest.mark.slow
def test_following_the_advice_after_an_exploding_save_finishes(tmp_path, plugin_env):
    # Milestone 3 (BasicSR steps the scheduler from iteration 2 on, so it is iteration 4's lr) multiplies the
    # lr by 1e12 at the save iteration 4: the weights stay finite, the output does not, so that save is
    # refused (exit 3) and net_g_2 / 2.state stay the last good pair.
    data = write_pairs(tmp_path / 'data', n=4)
    options = tiny_gmmoe_options(data, 'advice', total_iter=4, checkpoint_freq=2)
    options['train']['scheduler'] = {'type': 'MultiStepRestartLR', 'milestones': [3], 'gamma': 1e12}
    done = train(tmp_path, plugin_env, options)
    assert done.returncode == 3, done.stderr[-3000:]
    assert 'Lower train.optim_g.lr' in done.stderr and 'then resume with --auto_resume' in done.stderr
    exp = tmp_path / 'experiments' / 'advice'
    assert sorted(os.listdir(exp / 'training_states')) == ['2.state']

    # The advice followed: a lower lr, the milestone moved past the end, --auto_resume.
    options['train']['optim_g']['lr'] = 1e-4
    options['train']['scheduler']['milestones'] = [8]
    done = train(tmp_path, plugin_env, options, '--auto_resume')
    assert done.returncode == 0, done.stderr[-3000:]
    log = last_log(exp, 'advice')
    assert 'train.optim_g.lr 0.0001 from the option file replaces 0.001 of the state' in log
    assert 'train.scheduler.milestones [8] from the option file replaces [3] of the state' in log
    resumed = log.split('Resuming training from epoch')[1]
    assert 'iter: 2.' in resumed.splitlines()[0]
    assert 'lr:(1.000e-04,)' in resumed and 'lr:(1.000e-03,)' not in resumed
    assert (exp / 'models' / 'net_g_4.pth').is_file() and 'End of training' in log


class Hostile:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.slow
def test_hostile_checkpoint_runs_no_code_even_when_torch_allows_it(tmp_path, plugin_env):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'params': Hostile(marker)}, evil)
    data = write_pairs(tmp_path / 'data', n=2)
    options = tiny_gmmoe_options(data, 'hostile', total_iter=1, checkpoint_freq=1)
    test_opt = tiny_test_options(options, 'hostile', evil)
    env = dict(plugin_env, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    done = run_basicsr(['test', '-opt', str(write_yaml(tmp_path / 'test.yml', test_opt))], tmp_path, env)
    assert done.returncode == 2 and f'cannot load network checkpoint {evil}' in done.stderr
    assert not marker.exists()

    assert train(tmp_path, plugin_env, options).returncode == 0
    saved = tmp_path / 'experiments' / 'hostile' / 'models' / 'net_g_1.pth'
    saved.write_bytes(evil.read_bytes())
    options['train']['total_iter'] = 2
    done = train(tmp_path, env, options, '--auto_resume')
    assert done.returncode == 2 and f'cannot load network checkpoint {saved}' in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    'edit, message',
    [
        (lambda o: o['network_g'].update(width='eight'), "network_g.width must be an integer >= 1, got 'eight'"),
        (lambda o: o['network_g'].update(width=-4), 'network_g.width must be an integer >= 1, got -4'),
        (
            lambda o: o['datasets']['train'].update(gt_size='big'),
            "datasets.train.gt_size must be an integer >= 1, got 'big'",
        ),
        (lambda o: o['logger'].update(save_checkpoint_freq=0), 'logger.save_checkpoint_freq must be an integer >= 1'),
        (lambda o: o['network_g'].update(enc_blk_nums=[1, 'x']), 'network_g.enc_blk_nums[1] must be an integer'),
        # these failed deep inside BasicSR with a KeyError, TypeError or AttributeError (issue 26)
        (lambda o: o['train'].pop('scheduler'), 'train: missing key(s) scheduler'),
        (lambda o: o['logger'].pop('print_freq'), 'logger: missing key(s) print_freq'),
        (
            lambda o: o['train']['scheduler'].update(periods='x'),
            "train.scheduler.periods must be a non-empty list, got 'x'",
        ),
        (lambda o: o['train']['scheduler'].update(foo=1), 'train.scheduler: unknown option(s) foo of CosineAnnealing'),
        (lambda o: o['train']['pixel_opt'].update(type='NoLoss'), 'train.pixel_opt.type: "NoLoss" is not registered'),
        (lambda o: o['train']['pixel_opt'].update(foo=2), 'train.pixel_opt: unknown option(s) foo of PSNRLoss'),
        (lambda o: o['network_g'].update(foo=1), 'network_g: unknown option(s) foo of GMMoE'),
        (lambda o: o.update(path='x'), "path must be a mapping of options, got 'x'"),
        (lambda o: o.update(manual_seed='x'), "manual_seed must be an integer in [0, 4294967295], got 'x'"),
        (lambda o: o.update(name=5), 'name must be a non-empty string, got 5'),
        (lambda o: o['train'].update(warmup_iter='x'), "train.warmup_iter must be an integer >= -1, got 'x'"),
        (lambda o: o['datasets'].update(foo=o['datasets']['val']), 'datasets.foo: unknown phase'),
        (lambda o: o['datasets']['train'].pop('type'), 'datasets.train.type: missing or not a name'),
    ],
)
def test_wrong_option_types_are_one_line_errors(tmp_path, capsys, edit, message):
    options = tiny_gmmoe_options(tmp_path, 'types', total_iter=1, checkpoint_freq=1)
    edit(options)
    path = tmp_path / 'opt.yml'
    path.write_text(yaml.safe_dump(options))
    assert cli.main(['train', '-opt', str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and len(err.strip().splitlines()) == 1


def test_an_option_error_from_deep_in_basicsr_is_one_line_without_a_class_name(tmp_path, capsys, monkeypatch):
    data = write_pairs(tmp_path / 'data', n=2)
    options = tiny_gmmoe_options(data, 'deep', total_iter=1, checkpoint_freq=1)
    options['path']['pretrain_network_g'] = str(tmp_path / 'nowhere.pth')  # found missing only when loading
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / 'deep.yml', options)
    monkeypatch.delenv('GMMOE_TRACEBACK', raising=False)
    assert cli.main(['train', '-opt', str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f'basicsr train: error in option file {path}: network checkpoint not found: ')
    assert 'FileNotFoundError' not in last and last.endswith('(GMMOE_TRACEBACK=1 shows the traceback)')


@pytest.mark.parametrize(
    'exc, text',
    [
        (KeyError('print_freq'), 'missing key print_freq'),
        (KeyError("No object named 'X' found in 'arch' registry!"), "No object named 'X' found in 'arch' registry!"),
        (ValueError('train.optim_g.lr: expected a number'), 'train.optim_g.lr: expected a number'),
    ],
)
def test_error_text_has_no_class_name_and_names_a_missing_key(exc, text):
    assert cli.error_text(exc) == text
