"""What the slow search tests share: the real rsc15_100k splits (skipped where they are absent), the console
scripts beside this interpreter, and a two-parameter space whose trials take about a second an epoch."""
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"
BIN = Path(sys.executable).parent
SLOW_ON_DATA = [pytest.mark.slow,
                pytest.mark.skipif(not (DATA / "train_tr.tsv").is_file(), reason=f"{DATA} is not present")]
SMALL_SPACE = [{"name": "layers", "dtype": "int", "values": [32, 64], "step": 32},
               {"name": "learning_rate", "dtype": "float", "values": [0.05, 0.2], "step": 0.05}]
