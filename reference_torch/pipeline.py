"""Pipeline twin: Applio's `Pipeline.pipeline` / `voice_conversion` / `get_f0` transcribed with our PyTorch twins
(HuBERT, synthesizer, RMVPE / CREPE / FCPE) and faiss, keeping the original's order of operations and dtypes.

Layout as the original: 16 kHz float64 audio, F0 (frames,) numpy, features (1, F, d) torch, output float32 numpy.
Deviations, each a fix of an original bug: no-f0 models get no pitch (the original calls `pitchf.float()` on
None); noise is injected (segment i uses `make_noise(cfg, p_len, seed + i)`), never drawn from torch's RNG.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal

from rvc_common.config import PIPELINE, PipelineConfig
from rvc_common.inputs import make_noise
from rvc_common.instrument import tap


class Pipeline:
    """Twin of rvc/infer/pipeline.py: audio (N,) float64 at 16 kHz -> audio at the model's rate (float32)."""

    def __init__(self, hubert, synth, pitch_models: dict | None = None, index_path: str | None = None,
                 cfg: PipelineConfig = PIPELINE):
        self.hubert, self.synth, self.cfg = hubert, synth, cfg
        self.pitch_models = dict(pitch_models or {})  # method -> twin predictor
        self.index_path = index_path
        self.f0_mel_min = 1127 * np.log(1 + 50 / 700)
        self.f0_mel_max = 1127 * np.log(1 + 1100 / 700)
        self.bh, self.ah = signal.butter(N=cfg.hp_order, Wn=cfg.hp_cutoff, btype="high", fs=cfg.sample_rate)

    # the original's attributes, read from `cfg` at call time (a test case may change the split constants)
    window = property(lambda self: self.cfg.window)
    t_pad = property(lambda self: self.cfg.t_pad)
    t_pad2 = property(lambda self: 2 * self.cfg.t_pad)
    t_pad_tgt = property(lambda self: self.cfg.t_pad_at(self.synth.cfg.sr))
    t_query = property(lambda self: self.cfg.t_query)
    t_center = property(lambda self: self.cfg.t_center)
    t_max = property(lambda self: self.cfg.t_max)

    # ---------------------------------------------------------------------------------------- get_f0
    def get_f0(self, x, p_len, f0_method, pitch, seed):
        model = self.pitch_models[f0_method]
        if f0_method in ("crepe", "crepe-tiny"):
            f0 = model.f0(x, seed=seed)
        elif f0_method == "rmvpe":
            f0 = model.f0(x, threshold=0.03)
        else:
            f0 = model.f0(x, threshold=0.006)
        f0 = np.asarray(f0, dtype=np.float64)
        f0 *= pow(2, pitch / 12)
        f0bak = f0.copy()
        f0_mel = 1127 * np.log(1 + f0 / 700)
        f0_mel[f0_mel > 0] = (f0_mel[f0_mel > 0] - self.f0_mel_min) * 254 / (self.f0_mel_max - self.f0_mel_min) + 1
        f0_mel[f0_mel <= 1] = 1
        f0_mel[f0_mel > 255] = 255
        f0_coarse = np.rint(f0_mel).astype(int)
        return f0_coarse, f0bak

    # ------------------------------------------------------------------------------ voice_conversion
    @torch.no_grad()
    def voice_conversion(self, sid, audio0, pitch, pitchf, index, big_npy, index_rate, protect, seed):
        cfg = self.synth.cfg
        dtype = self.hubert.dtype
        pitch_guidance = pitch is not None and pitchf is not None
        feats = torch.from_numpy(self.hubert.features(audio0, layer=12, final_proj=cfg.version == "v1"))[None]
        feats = tap("pipeline.features", feats.to(dtype))
        feats0 = feats.clone() if pitch_guidance else None
        if index is not None:
            npy = feats[0].cpu().numpy().astype(np.float32)
            score, ix = index.search(npy, k=8)
            weight = np.square(1 / score)
            weight /= weight.sum(axis=1, keepdims=True)
            npy = np.sum(big_npy[ix] * np.expand_dims(weight, axis=2), axis=1)
            feats = tap("pipeline.retrieved", torch.from_numpy(npy).unsqueeze(0).to(dtype) * index_rate
                        + (1 - index_rate) * feats)
        feats = F.interpolate(feats.permute(0, 2, 1), scale_factor=2).permute(0, 2, 1)
        p_len = min(audio0.shape[0] // self.window, feats.shape[1])
        if pitch_guidance:
            feats0 = F.interpolate(feats0.permute(0, 2, 1), scale_factor=2).permute(0, 2, 1)
            pitch, pitchf = pitch[:, :p_len], pitchf[:, :p_len]
            if protect < 0.5:
                pitchff = pitchf.clone()
                pitchff[pitchf > 0] = 1
                pitchff[pitchf < 1] = protect
                feats = feats * pitchff.unsqueeze(-1) + feats0 * (1 - pitchff.unsqueeze(-1))
                feats = tap("pipeline.protected", feats.to(feats0.dtype))
        feats = feats[0, :p_len].numpy()
        noise = make_noise(cfg, p_len, seed)
        # the synthesizer's inputs (net_g.infer(feats, p_len, pitch, pitchf, sid) in the original)
        tap("pipeline.synth.phone", feats[None])
        if pitch_guidance:
            tap("pipeline.synth.pitch", pitch)
            tap("pipeline.synth.f0", pitchf)
        tap("pipeline.synth.noise", noise.eps_zp)
        if pitch_guidance:
            out = self.synth.infer(feats, pitch[0].numpy(), pitchf[0].numpy(), int(sid), noise)
        else:
            out = self.synth.infer(feats, None, None, int(sid), noise)
        return tap("pipeline.synth.audio", out)

    # ------------------------------------------------------------------------------------- pipeline
    def split_points(self, audio):
        """The original's opt_ts: quietest 10 ms window within +-t_query of every t_center (long inputs)."""
        audio_pad = np.pad(audio, (self.window // 2, self.window // 2), mode="reflect")
        opt_ts = []
        if audio_pad.shape[0] > self.t_max:
            audio_sum = np.zeros_like(audio)
            for i in range(self.window):
                audio_sum += audio_pad[i: i - self.window]
            for t in range(self.t_center, audio.shape[0], self.t_center):
                near = np.abs(audio_sum[t - self.t_query: t + self.t_query])
                opt_ts.append(t - self.t_query + np.where(near == near.min())[0][0])
        return [int(t) for t in opt_ts]

    def pipeline(self, sid, audio, pitch, f0_method, index_rate, volume_envelope, protect, seed=0):
        index = big_npy = None
        if self.index_path is not None and index_rate > 0:
            import faiss

            index = faiss.read_index(str(self.index_path))
            try:
                big_npy = index.reconstruct_n(0, index.ntotal)
            except RuntimeError:  # IVF indexes reconstruct only with a direct map
                index.make_direct_map()
                big_npy = index.reconstruct_n(0, index.ntotal)
        audio = tap("pipeline.input", signal.filtfilt(self.bh, self.ah, audio))
        opt_ts = self.split_points(audio)
        s = 0
        audio_opt = []
        t = None
        audio_pad = tap("pipeline.padded", np.pad(audio, (self.t_pad, self.t_pad), mode="reflect"))
        p_len = audio_pad.shape[0] // self.window
        pitch_guidance = self.synth.cfg.use_f0
        if pitch_guidance:
            pitch, pitchf = self.get_f0(audio_pad, p_len, f0_method, pitch, seed)
            pitch = tap("pipeline.pitch_coarse", pitch[:p_len])
            pitchf = tap("pipeline.f0", pitchf[:p_len])
            pitch = torch.tensor(pitch).unsqueeze(0).long()
            pitchf = torch.tensor(pitchf).unsqueeze(0).float()
        else:
            pitch = pitchf = None
        for i, t in enumerate(opt_ts):
            t = t // self.window * self.window
            sl = slice(s // self.window, (t + self.t_pad2) // self.window)
            out = self.voice_conversion(sid, audio_pad[s: t + self.t_pad2 + self.window],
                                        None if pitch is None else pitch[:, sl],
                                        None if pitchf is None else pitchf[:, sl],
                                        index, big_npy, index_rate, protect, seed + i)
            audio_opt.append(tap("pipeline.segment_audio", out[self.t_pad_tgt: -self.t_pad_tgt]))
            s = t
        last = slice(t // self.window, None) if t is not None else slice(None)
        out = self.voice_conversion(sid, audio_pad[t:], None if pitch is None else pitch[:, last],
                                    None if pitchf is None else pitchf[:, last], index, big_npy, index_rate,
                                    protect, seed + len(opt_ts))
        audio_opt.append(tap("pipeline.segment_audio", out[self.t_pad_tgt: -self.t_pad_tgt]))
        audio_opt = tap("pipeline.trimmed", np.concatenate(audio_opt))
        if volume_envelope != 1:
            audio_opt = tap("pipeline.rms_mixed", change_rms(audio, self.cfg.sample_rate, audio_opt,
                                                             self.synth.cfg.sr, volume_envelope))
        audio_max = np.abs(audio_opt).max() / 0.99
        if audio_max > 1:
            audio_opt /= audio_max
        return tap("pipeline.audio", audio_opt.astype(np.float32))

    def convert(self, audio, sr, sid=0, pitch=0, f0_method="rmvpe", index_rate=0.75, volume_envelope=1.0,
                protect=0.5, seed=0):
        """infer.py's path: load_audio_infer (mono, soxr VHQ to 16 kHz), peak to 0.95, then `pipeline`."""
        import librosa

        audio = np.asarray(audio, dtype=np.float64)
        if audio.ndim > 1:
            audio = librosa.to_mono(audio.T)
        if sr != 16000:
            audio = librosa.resample(audio, orig_sr=sr, target_sr=16000, res_type="soxr_vhq")
        audio_max = np.abs(audio).max() / 0.95
        if audio_max > 1:
            audio /= audio_max
        return self.pipeline(sid, audio, pitch, f0_method, index_rate, volume_envelope, protect, seed)


def change_rms(source_audio, source_rate, target_audio, target_rate, rate):
    """AudioProcessor.change_rms, as the original (librosa RMS, torch linear interpolation)."""
    import librosa

    rms1 = librosa.feature.rms(y=source_audio, frame_length=source_rate // 2 * 2, hop_length=source_rate // 2)
    rms2 = librosa.feature.rms(y=target_audio, frame_length=target_rate // 2 * 2, hop_length=target_rate // 2)
    rms1 = F.interpolate(torch.from_numpy(rms1).float().unsqueeze(0), size=target_audio.shape[0],
                         mode="linear").squeeze()
    rms2 = F.interpolate(torch.from_numpy(rms2).float().unsqueeze(0), size=target_audio.shape[0],
                         mode="linear").squeeze()
    rms2 = torch.maximum(rms2, torch.zeros_like(rms2) + 1e-6)
    return target_audio * (torch.pow(rms1, 1 - rate) * torch.pow(rms2, rate - 1)).numpy()
