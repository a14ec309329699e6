"""Entry point of the ``gmmoe`` console command: its arguments are parsed before the package is imported.

``import gmmoe_arch`` loads torch and basicsr, which takes seconds; a usage error or ``--help`` should not
wait for that. This module (standard library only) loads ``gmmoe_arch/enhance_cli.py``, whose parser needs
neither torch nor basicsr, as a stand-alone module, lets it parse the command line (argparse exits on a usage
error or ``--help``), and only then runs the command from the package.
"""

import importlib.util
import os
import sys


def _standalone_parser_module():
    """``gmmoe_arch/enhance_cli.py`` executed outside its package (finding the package does not import it)."""
    package = importlib.util.find_spec('gmmoe_arch')
    path = os.path.join(os.path.dirname(package.origin), 'enhance_cli.py')
    spec = importlib.util.spec_from_file_location('_gmmoe_enhance_cli_parser', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    _standalone_parser_module().build_parser(argv[0] if argv else None).parse_args(argv)
    from gmmoe_arch import enhance_cli

    return enhance_cli.main(argv)


if __name__ == '__main__':
    sys.exit(main())
