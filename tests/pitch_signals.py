"""Synthetic test signals with a known f0 on the pipeline's 10 ms grid, and pitch-accuracy measures.

A signal is a sequence of segments: harmonic tones (exponential glides, sinusoidal vibrato), unvoiced noise
bursts and silences, with white noise added over the whole signal at a given SNR (relative to the tones'
power). Frame i of the truth is the instantaneous f0 at sample i * 160 (the centre of torchcrepe's frame i
and the time of Harvest's frame i), 0 where no tone sounds. Frames within `BOUNDARY_MARGIN_FRAMES` of a
voiced/unvoiced boundary are left out of the scores: a 64 ms analysis window there sees both.

Measures (voiced = f0 > 0):
* raw pitch accuracy (RPA): among scored, truly voiced frames, the share estimated voiced within 50 cents;
* voicing recall: among scored, truly voiced frames, the share estimated voiced;
* voicing precision: among scored frames estimated voiced, the share truly voiced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000  # Hz
HOP_LENGTH = 160  # samples per truth frame (10 ms)
BOUNDARY_MARGIN_FRAMES = 4  # frames on each side of a voicing boundary left out of the scores
RPA_TOLERANCE_CENTS = 50.0  # an estimate within this of the truth counts as correct
MAX_HARMONIC_HZ = 7600.0  # harmonics above this are left out (no aliasing near Nyquist)
FADE_S = 0.01  # raised-cosine fade at both ends of each tone


@dataclass(frozen=True)
class Tone:
    duration_s: float  # length of the segment
    f0_start_hz: float  # f0 at the start; the centre line glides exponentially to f0_end_hz
    f0_end_hz: float  # f0 at the end of the segment
    vibrato_cents: float = 0.0  # vibrato depth (peak deviation from the centre line)
    vibrato_hz: float = 5.5  # vibrato rate
    amplitude: float = 0.3  # peak amplitude of the fundamental; harmonic k has amplitude / k


@dataclass(frozen=True)
class Noise:
    duration_s: float  # length of the unvoiced segment
    amplitude: float = 0.1  # standard deviation of the white noise


@dataclass(frozen=True)
class Silence:
    duration_s: float  # length of the gap (only the background noise)


@dataclass(frozen=True)
class PitchSignal:
    audio: np.ndarray  # (S,) float32 at 16 kHz
    f0_hz: np.ndarray  # (1 + S // 160,) true f0 at sample 160 i, 0 where unvoiced
    scored: np.ndarray  # (1 + S // 160,) bool: frames the measures use

    @property
    def voiced(self) -> np.ndarray:
        return self.f0_hz > 0


# Glides across 60-1000 Hz in both directions, vibrato, unvoiced bursts and gaps: 3.6 s, 361 frames. Each
# tone starts within an octave of where the previous one ended, as consecutive sung phrases do.
STANDARD_SEGMENTS = (
    Silence(0.1),
    Tone(1.5, 60.0, 1000.0),
    Noise(0.2),
    Tone(0.8, 900.0, 110.0, vibrato_cents=30.0, vibrato_hz=4.0, amplitude=0.2),
    Silence(0.1),
    Tone(0.6, 220.0, 220.0, vibrato_cents=60.0, vibrato_hz=5.5),
    Noise(0.2, amplitude=0.05),
    Tone(0.1, 440.0, 440.0),
)

# The same segments with leaps of 2.2 and 2.0 octaves across 200 ms of noise and 100 ms of silence
# (1000 Hz -> 220 Hz, 220 Hz -> 900 Hz): a stress case for trackers with a slew limit (CREPE's Viterbi).
LEAP_SEGMENTS = (
    Silence(0.1),
    Tone(1.5, 60.0, 1000.0),
    Noise(0.2),
    Tone(0.6, 220.0, 220.0, vibrato_cents=60.0, vibrato_hz=5.5),
    Silence(0.1),
    Tone(0.8, 900.0, 110.0, vibrato_cents=30.0, vibrato_hz=4.0, amplitude=0.2),
    Noise(0.2, amplitude=0.05),
    Tone(0.1, 440.0, 440.0),
)


def _tone(seg: Tone, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(samples, instantaneous f0 per sample) of one harmonic tone."""
    n = int(round(seg.duration_s * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    centre = seg.f0_start_hz * (seg.f0_end_hz / seg.f0_start_hz) ** (t / seg.duration_s)
    f0 = centre * 2 ** (seg.vibrato_cents / 1200 * np.sin(2 * np.pi * seg.vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wave = np.zeros(n)
    for k in range(1, int(MAX_HARMONIC_HZ // f0.min()) + 1):
        below = k * f0 < MAX_HARMONIC_HZ  # drop a harmonic where it would pass the limit
        wave += below * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k
    fade = min(int(FADE_S * SAMPLE_RATE), n // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    wave[:fade] *= ramp
    wave[n - fade:] *= ramp[::-1]
    return seg.amplitude * wave, f0


def make_signal(segments=STANDARD_SEGMENTS, snr_db: float = 20.0, seed: int = 0) -> PitchSignal:
    """Render `segments` with white noise at `snr_db` below the tones' mean power (inf: no noise)."""
    rng = np.random.default_rng(seed)
    parts, f0_parts = [], []
    for seg in segments:
        if isinstance(seg, Tone):
            wave, f0 = _tone(seg, rng)
        else:
            n = int(round(seg.duration_s * SAMPLE_RATE))
            wave = rng.standard_normal(n) * seg.amplitude if isinstance(seg, Noise) else np.zeros(n)
            f0 = np.zeros(n)
        parts.append(wave)
        f0_parts.append(f0)
    audio = np.concatenate(parts)
    f0_samples = np.concatenate(f0_parts)
    if np.isfinite(snr_db):
        tone_power = np.mean(audio[f0_samples > 0] ** 2)
        audio = audio + rng.standard_normal(len(audio)) * np.sqrt(tone_power / 10 ** (snr_db / 10))
    frames = 1 + len(audio) // HOP_LENGTH
    f0_hz = f0_samples[np.minimum(np.arange(frames) * HOP_LENGTH, len(audio) - 1)]
    voiced = f0_hz > 0
    boundary = np.flatnonzero(np.diff(voiced.astype(np.int8)) != 0)
    scored = np.ones(frames, dtype=bool)
    for b in boundary:
        scored[max(0, b + 1 - BOUNDARY_MARGIN_FRAMES) : b + 1 + BOUNDARY_MARGIN_FRAMES] = False
    return PitchSignal(audio.astype(np.float32), f0_hz, scored)


def _aligned(estimate: np.ndarray, signal: PitchSignal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, truth, scored) cut to the common number of frames (trackers differ by one or two)."""
    n = min(len(estimate), len(signal.f0_hz))
    return np.asarray(estimate[:n], dtype=np.float64), signal.f0_hz[:n], signal.scored[:n]


def cents_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|1200 log2(estimate / truth)| where both are voiced, inf where the estimate is not."""
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(1200 * np.log2(estimate / truth))
    return np.where((estimate > 0) & np.isfinite(err), err, np.inf)


def raw_pitch_accuracy(estimate: np.ndarray, signal: PitchSignal) -> float:
    est, truth, scored = _aligned(estimate, signal)
    sel = scored & (truth > 0)
    return float(np.mean(cents_error(est[sel], truth[sel]) <= RPA_TOLERANCE_CENTS))


def voicing_recall(estimate: np.ndarray, signal: PitchSignal) -> float:
    est, truth, scored = _aligned(estimate, signal)
    sel = scored & (truth > 0)
    return float(np.mean(est[sel] > 0))


def voicing_precision(estimate: np.ndarray, signal: PitchSignal) -> float:
    est, truth, scored = _aligned(estimate, signal)
    sel = scored & (est > 0)
    return float(np.mean(truth[sel] > 0)) if sel.any() else 1.0


def scores(estimate: np.ndarray, signal: PitchSignal) -> dict[str, float]:
    """{"rpa", "recall", "precision"} of an f0 track (Hz, 0 = unvoiced) against the signal's truth."""
    return {"rpa": raw_pitch_accuracy(estimate, signal), "recall": voicing_recall(estimate, signal),
            "precision": voicing_precision(estimate, signal)}
