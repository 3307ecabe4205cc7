from ganzip.cli import run

run()
