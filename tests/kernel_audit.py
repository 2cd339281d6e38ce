"""`python tests/kernel_audit.py overrides...`: train_QPA.py with every PyTorch operator checked on its way to the
kernel, failing at the first one whose CPU result depends on the processor.

On a CPU, torch.sqrt (and what calls it: the default Adam step, torch.cdist, pow(x, 0.5)) runs MKL's vector math
library, which picks its code by processor: an AMD EPYC and an Intel Xeon round the same inputs differently in the
last bit, whatever MKL_CBWR says, and a run's logs part from the first SAC update on (docs/TESTING.md). The
training code avoids them (utils.adam, rsqrt); this audit keeps it so. exp, log and tanh also run through that
library, but under the golden tests' pins both makers wrote the same bits for them, so they are allowed.
"""

from __future__ import annotations

import runpy
import sys
import traceback
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESSOR_DEPENDENT = {"sqrt", "sqrt_", "_foreach_sqrt", "_foreach_sqrt_", "cdist", "_cdist_forward", "_euclidean_dist"}


class RefuseProcessorDependentKernels(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        square_root = name.startswith("pow") and len(args) > 1 and isinstance(args[1], float) and args[1] == 0.5
        if name in PROCESSOR_DEPENDENT or square_root:
            ours = [
                frame
                for frame in traceback.extract_stack()[:-1]
                if frame.filename.startswith(str(REPO_ROOT)) and ".venv" not in frame.filename
            ]
            caller = ours[-1] if ours else traceback.extract_stack()[-2]
            raise RuntimeError(f"processor-dependent kernel aten.{name} called at {caller.filename}:{caller.lineno} "
                               "(see tests/kernel_audit.py)")  # fmt: skip
        return func(*args, **(kwargs or {}))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.argv = ["train_QPA.py", *sys.argv[1:]]
    with RefuseProcessorDependentKernels():
        runpy.run_path(str(REPO_ROOT / "train_QPA.py"), run_name="__main__")
