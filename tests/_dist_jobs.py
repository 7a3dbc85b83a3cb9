"""Helpers the processes of tests/test_distributed.py import by name (the test puts this folder on their PYTHONPATH)."""
import threading
from pathlib import Path
from diffaug_nb.distributed import is_main_process


class BlockAt:
    "A trainer callback: at `step`, the main process writes `signal_file`, then every process waits until it is killed."
    def __init__(self, step:int, signal_file): self.step, self.signal_file = step, str(signal_file)
    def __call__(self, info:dict):
        if info['step'] != self.step: return
        if is_main_process(): Path(self.signal_file).write_text(str(info['step']))
        threading.Event().wait()   # no timeout: the test kills the run on the signal file, never on a clock


def resume_then_fit(score:dict, classifier:dict)->dict:
    "One launch, two trainers: resume the score model `train_score_model(**score)`, then `fit_classifier(**classifier)`; its curves."
    from diffaug_nb.scoremodel import train_score_model
    from diffaug_nb.train import fit_classifier
    train_score_model(**score)
    return fit_classifier(**classifier)
