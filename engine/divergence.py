"""Where a divergence began, so that a non-finite loss names a checkpoint that really continues.

A loss rarely jumps from normal to NaN: with `--learning_rate 1e6` (adam, width 0.125) step 1's update
blows the weights up to ~1e6, step 2's loss is finite but ~1e6 times step 1's, step 3's is NaN. The
checkpoint of step 1 gave a finite loss and is already ruined; resumed at 1e-3 it fails again at step 3.
So "the last checkpoint whose loss was finite" is not the last good one.

The loss of step N comes from the weights saved at step N - 1 (DESIGN.md: a checkpoint ckpt-K holds the
weights after K updates). `LossBand` tracks the loss: the band is BAND_FACTOR times the median of the
last WINDOW losses that were inside it; the first loss a process sees starts the median (a warm-up of
one step: early SSD losses only fall, so a median of the first few is a lenient reference). The first
step whose loss leaves the band is where the divergence began (`diverging_since`); the weights that gave
it were saved at that step - 1, so the last good checkpoint is the last one written at or before
that step - 2. A loss that comes back into the band by itself clears the mark and stops nothing; a loss
that stays above it for WINDOW steps is taken as the new level (the median restarts from those losses).

`Watch` joins the band to the model_dir. When a divergence begins it protects that checkpoint from
`--keep_checkpoints` rotation (hard links in `<model_dir>/protected/`, engine.checkpoints.protect), so
the run may diverge for many saves before the loss turns non-finite; when the loss turns non-finite it
removes every checkpoint written after that one, puts it back if rotation deleted it, makes it the
latest and stops with one message: the step, the losses, where the divergence began, how far back the
named checkpoint is, and a lower rate to resume with. When no checkpoint predates the divergence all of
the run's checkpoints are removed and a restart begins from the initialization.

Limitation: the band starts afresh in every process, so the first loss after a resume has no reference.
"""

import math
import statistics

from absl import logging

from engine import checkpoints

BAND_FACTOR = 5.0   # SSD's loss falls from ~20 to ~3 over a run; ordinary spikes stay well below 5x
WINDOW = 20         # losses in the running median, and out-of-band steps before a new level is accepted


class LossBand:
    """The running median of in-band losses and the step where the current excursion above it began."""

    def __init__(self, factor=BAND_FACTOR, window=WINDOW):
        self.factor = factor
        self.window = window
        self._inside = []     # the last `window` in-band losses
        self._outside = []    # the losses of the current excursion
        self.diverging_since = None

    @property
    def limit(self):
        """The band's upper edge, or None before the first loss."""
        return self.factor * statistics.median(self._inside) if self._inside else None

    def observe(self, step, loss):
        """Takes the finite total loss of `step`; returns True when it is the first step of an excursion."""
        limit = self.limit
        if limit is not None and loss > limit:
            self._outside.append(loss)
            if len(self._outside) >= self.window:   # it stayed there: a new level, not a divergence
                self._inside, self._outside, self.diverging_since = self._outside, [], None
                return False
            if self.diverging_since is None:
                self.diverging_since = step
                return True
            return False
        self._inside = (self._inside + [loss])[-self.window:]
        self._outside, self.diverging_since = [], None
        return False


class Watch:
    """Checks the loss dict of every step (see the module docstring). `model_dir` is the chief's; None
    on other workers (they only stop). `learning_rate` is the run's base rate, for the message."""

    def __init__(self, model_dir=None, learning_rate=None, band=None):
        self.model_dir = model_dir
        self.learning_rate = learning_rate
        self.band = band or LossBand()
        self.protected = None   # the checkpoint kept from rotation during an excursion

    def check(self, step, loss_dict):
        """The losses of `step` as floats; FloatingPointError (see `non_finite`) when one is not finite."""
        values = {k: float(v) for k, v in loss_dict.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(self.non_finite(step, values))
        limit = self.band.limit
        if self.band.observe(step, values["total_loss"]):
            self._protect(step, values["total_loss"], limit)
        elif self.band.diverging_since is None and self.protected:
            logging.info("the loss is back within its band at step %d; %s is no longer kept", step,
                         self.protected)
            self._unprotect()
        return values

    def _protect(self, step, loss, limit):
        logging.warning("step %d: total_loss %.4g left its band (%.4g = %g x running median); watching for "
                        "a divergence", step, loss, limit, self.band.factor)
        if not self.model_dir:
            return
        self._unprotect()
        self.protected = checkpoints.latest_at_or_before(self.model_dir, step - 2)
        if self.protected:
            checkpoints.protect(self.model_dir, self.protected)

    def _unprotect(self):
        if self.model_dir:
            checkpoints.unprotect(self.model_dir)
        self.protected = None

    def non_finite(self, step, values):
        """Removes the checkpoints written after the divergence began (the chief's) and says so."""
        began = self.band.diverging_since or step
        if began < step:
            where = (f"the divergence began at step {began}, {step - began} step{'s' if step - began > 1 else ''} "
                     f"earlier, where the loss left its band ({self.band.factor:g} x its running median)")
        else:
            where = "the loss was within its band up to the step before"
        named, removed = None, []
        if self.model_dir:
            named, removed = checkpoints.discard_from(self.model_dir, began - 1, keep=self.protected)
            checkpoints.unprotect(self.model_dir)
        removed_note = (f"; removed {', '.join(removed)}: written at or after step {began - 1}, whose weights "
                        f"gave the first loss outside the band" if removed else "")
        if named:
            saved_at = checkpoints.checkpoint_number(named)
            outcome = (f"the last checkpoint written before it, {named} (step {saved_at}, {step - saved_at} "
                       f"steps back), is now the latest and continues")
        elif self.model_dir:
            outcome = "no checkpoint predates it, so a restart begins from the initialization"
        else:
            outcome = "this worker writes no checkpoints"
        lower = (f"--learning_rate {self.learning_rate / 10:g} (a tenth of {self.learning_rate:g})"
                 if self.learning_rate else "a lower --learning_rate")
        return (f"non-finite loss at step {step}: {values}; stopped without saving: {where}{removed_note}; "
                f"{outcome}. Resume with {lower} or a longer --warmup_steps.")
