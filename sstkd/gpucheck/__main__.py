import argparse
import sys

from sstkd.gpucheck.run import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m sstkd.gpucheck",
                                     description="The whole GPU acceptance in one run (make gpu-check).")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
