from types import SimpleNamespace

from lightning.pytorch.callbacks import RichProgressBar

from sft.training.trainer import ProgressBar


def test_the_progress_bar_reads_logged_values_at_most_twice_a_second(monkeypatch):
    reads = []
    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, trainer, module: reads.append(1) or {"n": len(reads)})
    bar, training = ProgressBar(), SimpleNamespace(training=True)
    shown = [bar.get_metrics(training, None) for _ in range(100)]  # 100 batches in well under half a second
    assert len(reads) == 1 and shown[-1] == {"n": 1}
    assert bar.get_metrics(SimpleNamespace(training=False), None) == {"n": 2}  # validation's values: always read
