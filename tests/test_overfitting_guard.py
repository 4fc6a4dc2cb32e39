"""The over-fitting guard on synthetic metric lists: it fires when validation loss rises
while the train–validation gap widens, and names the epoch where early stopping
(patience 3, on validation accuracy as the Early stopping setting does) would stop."""

from __future__ import annotations

from tl_engine.hints import early_stopping_epoch, overfitting


def epochs(losses, val_losses, accuracies=None, val_accuracies=None, phase="head", start=1):
    rows = []
    for i, (loss, val_loss) in enumerate(zip(losses, val_losses, strict=True)):
        row = {"epoch": start + i, "phase": phase, "loss": loss, "val_loss": val_loss}
        if accuracies is not None:
            row["accuracy"] = accuracies[i]
        if val_accuracies is not None:
            row["val_accuracy"] = val_accuracies[i]
        rows.append(row)
    return rows


def test_rising_val_loss_with_widening_gap_warns_and_names_the_stop_epoch():
    metrics = epochs(
        losses=[0.9, 0.6, 0.4, 0.25, 0.15, 0.08, 0.04],
        val_losses=[0.8, 0.6, 0.5, 0.55, 0.62, 0.7, 0.8],
        accuracies=[0.6, 0.75, 0.85, 0.92, 0.96, 0.98, 0.99],
        val_accuracies=[0.65, 0.75, 0.8, 0.81, 0.80, 0.79, 0.79])
    found = overfitting(metrics)
    assert found is not None
    assert found.best_epoch == 3  # lowest validation loss
    assert found.epoch == 7
    assert found.gap_then < found.gap_now
    # Val accuracy last improved at epoch 4: patience 3 stops at epoch 7.
    assert found.stop_epoch == 7
    text = found.hint.text
    assert found.hint.level == "warning"
    assert "since epoch 3" in text and "would have stopped at epoch 7" in text
    assert "validation − training loss went from +0.100 to +0.760" in text


def test_a_negative_gap_reads_as_signed_numbers():
    """Dropout can keep validation loss below training loss: the gap then grows from a
    negative number, shown with its sign, not as a gap that 'widened' to a smaller one."""
    found = overfitting(epochs(losses=[0.9, 0.8, 0.75, 0.72, 0.7],
                               val_losses=[0.6, 0.4, 0.5, 0.55, 0.63],
                               val_accuracies=[0.7, 0.8, 0.8, 0.79, 0.78]))
    assert found is not None and found.gap_then < 0 and found.gap_now < 0
    assert "went from -0.400 to -0.070" in found.hint.text


def test_the_warning_comes_before_early_stopping_would_stop():
    metrics = epochs(losses=[0.9, 0.5, 0.3, 0.2, 0.1], val_losses=[0.7, 0.5, 0.52, 0.6, 0.7],
                     val_accuracies=[0.7, 0.8, 0.8, 0.79, 0.78])
    found = overfitting(metrics)
    assert found is not None and found.stop_epoch == 5
    metrics = epochs(losses=[0.9, 0.5, 0.3, 0.2], val_losses=[0.7, 0.5, 0.55, 0.62],
                     val_accuracies=[0.7, 0.8, 0.8, 0.79])
    found = overfitting(metrics)
    assert found is not None and found.stop_epoch == 5 and found.epoch == 4
    assert "would stop at epoch 5 unless validation accuracy improves" in found.hint.text


def test_healthy_and_noisy_runs_do_not_warn():
    # Both losses falling.
    assert overfitting(epochs([1.0, 0.7, 0.5, 0.4, 0.35], [0.9, 0.7, 0.55, 0.5, 0.48])) is None
    # One bad epoch is noise, not a trend.
    assert overfitting(epochs([1.0, 0.7, 0.5, 0.4], [0.9, 0.7, 0.5, 0.55])) is None
    # Validation loss rose but is coming back down.
    assert overfitting(epochs([1.0, 0.7, 0.5, 0.4, 0.3], [0.9, 0.6, 0.7, 0.75, 0.65])) is None
    # Both losses rise together (a learning rate too high): no widening gap.
    assert overfitting(epochs([0.5, 0.4, 0.45, 0.5, 0.55], [0.6, 0.5, 0.55, 0.6, 0.65])) is None
    # Too few epochs, or none.
    assert overfitting(epochs([1.0, 0.5], [0.9, 1.2])) is None
    assert overfitting([]) is None


def test_only_the_phase_now_training_counts():
    head = epochs([0.9, 0.5, 0.3, 0.2, 0.1], [0.7, 0.5, 0.52, 0.6, 0.7], phase="head")
    fine = epochs([0.3, 0.25], [0.45, 0.44], phase="fine-tune", start=6)
    assert overfitting(head) is not None
    assert overfitting(head + fine) is None  # fine-tuning has only two epochs, both better


def test_without_accuracy_early_stopping_watches_the_loss():
    found = overfitting(epochs([0.9, 0.5, 0.3, 0.2, 0.1, 0.05], [0.7, 0.5, 0.52, 0.6, 0.7,
                                                                  0.8]))
    assert found is not None and found.stop_epoch == 5  # best val loss at 2, + patience 3


def test_early_stopping_epoch_follows_keras():
    rows = [{"epoch": e, "val_accuracy": v} for e, v in
            enumerate([0.5, 0.6, 0.6, 0.7, 0.69, 0.7, 0.65, 0.71], start=1)]
    # Ties do not count as improvements (min_delta 0, strictly greater).
    assert early_stopping_epoch(rows, patience=3) == 7
    # Patience 5 never runs out: epoch 8 improves, so it would stop at 8 + 5 at the earliest.
    assert early_stopping_epoch(rows, patience=5) == 13
    assert early_stopping_epoch([], patience=3) is None
