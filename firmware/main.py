# Board entry point: `citynerve flash` copies this file to the board's root as /main.py.
from firmware.app import run

run()
