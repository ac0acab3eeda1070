import sys
from pathlib import Path

# The tests import their helper module (gguf_synth.py) from this folder; put it
# on sys.path explicitly so that works under any pytest import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))
