"""Model hyper-parameters: the one source of truth, imported by the MLX port and the PyTorch twin."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RMVPEConfig:
    """RMVPE as built by the original (`E2E(4, 1, (2, 2))` + its mel front end and decoder)."""

    n_blocks: int = 4  # ConvBlockRes per encoder / intermediate / decoder stage
    n_gru: int = 1
    pool: tuple[int, int] = (2, 2)  # AvgPool2d kernel and ConvTranspose2d stride
    en_de_layers: int = 5
    inter_layers: int = 4
    in_channels: int = 1
    en_out_channels: int = 16
    gru_hidden: int = 256
    n_mels: int = 128
    n_class: int = 360
    bn_eps: float = 1e-5
    # mel front end (RMVPE0Predictor: MelSpectrogram(128, 16000, 1024, 160, None, 30, 8000))
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    mel_fmin: float = 30.0
    mel_fmax: float = 8000.0
    mel_clamp: float = 1e-5
    # mel2hidden / decode
    frame_multiple: int = 32  # 5 poolings of 2 in time
    chunk_frames: int = 32000
    cents_offset: float = 1997.3794084376191
    cents_per_bin: float = 20.0
    decode_radius: int = 4  # weighted mean over argmax +- 4 bins
    threshold: float = 0.03  # RVC's pipeline threshold (`thred`)

    @property
    def min_samples(self) -> int:
        """Shortest input the original accepts: mel frames T must satisfy 32*ceil(T/32) - T < T (reflect pad)."""
        m = self.frame_multiple
        min_frames = next(t for t in range(1, 10 * m) if (m * ((t - 1) // m + 1) - t) < t)
        return (min_frames - 1) * self.hop_length


RMVPE = RMVPEConfig()


@dataclass(frozen=True)
class CREPEConfig:
    """CREPE as torchcrepe builds it (`Crepe(capacity)`) and as RVC calls `torchcrepe.predict`."""

    capacity: str = "full"  # "full" | "tiny"
    window: int = 1024  # samples per frame at 16 kHz
    sample_rate: int = 16000
    hop_length: int = 160  # RVC's hop (torchcrepe's default, 1/100 second, is the same)
    kernel_sizes: tuple[int, ...] = (512, 64, 64, 64, 64, 64)
    strides: tuple[int, ...] = (4, 1, 1, 1, 1, 1)
    paddings: tuple[tuple[int, int], ...] = ((254, 254),) + 5 * ((31, 32),)
    bn_eps: float = 0.0010000000474974513  # float32(1e-3), converted from Keras by MMdnn
    n_bins: int = 360
    cents_per_bin: float = 20.0
    cents_offset: float = 1997.3794084376191
    dither_cents: float = 20.0  # torchcrepe's bins_to_cents adds triangular(-20, 0, 20) cents
    # RVC's call: torchcrepe.predict(fmin=50, fmax=1100, batch_size=512, viterbi decoder, periodicity)
    fmin: float = 50.0
    fmax: float = 1100.0
    batch_size: int = 512  # frames per network batch; viterbi decoding restarts at each batch
    median_window: int = 3  # periodicity median filter
    mean_window: int = 3  # f0 mean filter
    periodicity_threshold: float = 0.1  # f0 = 0 where filtered periodicity < this

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of conv1..conv6 (input of conv1 is 1)."""
        if self.capacity == "full":
            return (1024, 128, 128, 128, 256, 512)
        if self.capacity == "tiny":
            return (128, 16, 16, 16, 32, 64)
        raise ConfigError(f"CREPE capacity must be 'full' or 'tiny', got {self.capacity!r}")

    @property
    def in_features(self) -> int:
        return 4 * self.channels[-1]

    @property
    def bin_range(self) -> tuple[int, int]:
        """Bins [lo, hi) inside [fmin, fmax] (torchcrepe: floor for fmin, ceil for fmax)."""
        lo = math.floor((1200 * math.log2(self.fmin / 10) - self.cents_offset) / self.cents_per_bin)
        hi = math.ceil((1200 * math.log2(self.fmax / 10) - self.cents_offset) / self.cents_per_bin)
        return lo, hi

    @staticmethod
    def capacity_of_conv1(shape: tuple[int, ...] | None) -> str | None:
        """'full' | 'tiny' from conv1.weight's shape (either framework's layout); None if it is neither."""
        if shape is None or math.prod(shape[1:]) != CREPEConfig.kernel_sizes[0]:
            return None
        widths = {CREPEConfig("full").channels[0]: "full", CREPEConfig("tiny").channels[0]: "tiny"}
        return widths.get(int(shape[0]))  # 4 time steps left after six (2, 1) max-pools of 256

    @property
    def min_samples(self) -> int:
        return self.hop_length


CREPE = CREPEConfig()


@dataclass(frozen=True)
class FCPEConfig:
    """FCPE as shipped in torchfcpe (`fcpe_c_v001.pt`: its config_dict plus the package's fixed choices)."""

    # mel front end (Wav2MelModule: periodic Hann, reflect pad (win-hop)/2 each side, STFT center=False)
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    mel_fmin: float = 0.0
    mel_fmax: float = 8000.0
    mel_htk: bool = False  # librosa's default Slaney mel scale (RMVPE uses htk=True)
    mel_clamp: float = 1e-5
    magnitude_eps: float = 1e-9  # sqrt(re^2 + im^2 + eps)
    # CFNaiveMelPE (conv_only=True: every encoder layer is x + ConformerConvModule(x))
    hidden: int = 512
    n_layers: int = 6
    n_class: int = 360
    expansion: int = 2  # conv module inner width = 2 * hidden (after the GLU halves 4 * hidden)
    kernel_size: int = 31  # depthwise conv, "same" padding
    groups: int = 4  # GroupNorm in the input stack
    # decoder ("local_argmax")
    decode_radius: int = 4  # salience-weighted mean over argmax +- 4 bins, indices clamped into range
    threshold: float = 0.006  # RVC's call
    # Shorter input yields frames computed mostly from padding; the package accepts down to 1 sample.
    min_samples: int = 160

    @property
    def pad(self) -> int:
        """Samples padded on each side before the STFT: (win - hop) // 2 = 432, so frame i is centred on
        sample i * hop + hop / 2 (half a hop later than RMVPE's centred frames)."""
        return (self.win_length - self.hop_length) // 2

    def n_frames(self, n_samples: int) -> int:
        return n_samples // self.hop_length + 1


FCPE_CFG = FCPEConfig()


@dataclass(frozen=True)
class PipelineConfig:
    """Applio's pipeline constants (rvc/infer/pipeline.py, rvc/configs/config.py for > 4 GB devices)."""

    sample_rate: int = 16000
    window: int = 160  # samples per F0 / feature frame at 16 kHz
    # whole seconds in the original; a test case may set fractions (a short input split into short segments)
    x_pad: float = 1  # seconds of reflect padding per side (and trimmed per segment at the output rate)
    x_query: float = 6  # seconds searched either side of a split point for the quietest window
    x_center: float = 38  # seconds between split points
    x_max: float = 41  # inputs longer than this (plus one hop) are split
    hp_order: int = 5  # Butterworth high-pass, applied forward-backward (filtfilt)
    hp_cutoff: float = 48.0
    input_peak: float = 0.95  # input is scaled down if max|x| > 0.95
    output_peak: float = 0.99  # output is scaled down if max|y| > 0.99
    resample_quality: str = "soxr_vhq"

    @property
    def t_pad(self) -> int:
        return round(self.sample_rate * self.x_pad)

    def t_pad_at(self, rate: int) -> int:
        """The padding in samples at `rate` (the output's: each segment is trimmed by it)."""
        return round(rate * self.x_pad)

    @property
    def t_query(self) -> int:
        return round(self.sample_rate * self.x_query)

    @property
    def t_center(self) -> int:
        return round(self.sample_rate * self.x_center)

    @property
    def t_max(self) -> int:
        return round(self.sample_rate * self.x_max)


PIPELINE = PipelineConfig()


class ConfigError(ValueError):
    """A model configuration is unreadable or describes an architecture this port does not implement."""


@dataclass(frozen=True)
class HubertConfig:
    """HuBERT / ContentVec as RVC uses it (transformers `HubertModel` + `final_proj`); field names are the
    HF config.json keys."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    feat_extract_activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    feat_extract_norm: str = "group"
    conv_bias: bool = False
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    feat_proj_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    classifier_proj_size: int = 256
    group_norm_eps: float = 1e-5  # torch.nn.GroupNorm default (not in config.json)
    sample_rate: int = 16000

    SUPPORTED = {"hidden_act": ("gelu",), "feat_extract_activation": ("gelu",), "do_stable_layer_norm": (False,),
                 "feat_extract_norm": ("group",)}

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for the standard extractor)."""
        rf = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride), strict=True):
            rf = (rf - 1) * s + k
        return rf

    @property
    def hop(self) -> int:
        h = 1
        for s in self.conv_stride:
            h *= s
        return h

    def n_frames(self, n_samples: int) -> int:
        """Output frames for `n_samples` (each conv: floor((L - k) / s) + 1)."""
        n = n_samples
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            n = (n - k) // s + 1
        return n

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> "HubertConfig":
        """Read an HF config.json dict; refuse variants this port does not implement, naming the key."""
        if d.get("model_type", "hubert") != "hubert":
            raise ConfigError(f"{source}: model_type {d.get('model_type')!r} is not hubert")
        for key, allowed in cls.SUPPORTED.items():
            if key in d and d[key] not in allowed:
                raise ConfigError(f"{source}: {key}={d[key]!r} is not supported (RVC's ContentVec uses {allowed[0]!r})")
        kw = {}
        for f in cls.__dataclass_fields__:
            if f in d and f not in ("group_norm_eps", "sample_rate"):
                v = d[f]
                kw[f] = tuple(v) if isinstance(v, list) else v
        cfg = cls(**kw)
        n = len(cfg.conv_dim)
        if not (len(cfg.conv_kernel) == len(cfg.conv_stride) == n == d.get("num_feat_extract_layers", n)):
            raise ConfigError(f"{source}: conv_dim/conv_kernel/conv_stride lengths disagree")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ConfigError(f"{source}: hidden_size {cfg.hidden_size} not divisible by "
                              f"num_attention_heads {cfg.num_attention_heads}")
        return cfg

    def to_hf(self) -> dict:
        """The config.json that RVC's ContentVec ships (transformers 4.27.3 era), for this architecture."""
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()
             if k not in ("group_norm_eps", "sample_rate")}
        d.update({
            "architectures": ["HubertModelWithFinalProj"], "model_type": "hubert", "apply_spec_augment": True,
            "activation_dropout": 0.1, "attention_dropout": 0.1, "feat_proj_dropout": 0.0, "final_dropout": 0.1,
            "hidden_dropout": 0.1, "layerdrop": 0.1, "mask_time_prob": 0.05, "mask_time_length": 10,
            "mask_time_min_masks": 2, "mask_feature_prob": 0.0, "mask_feature_length": 10,
            "mask_feature_min_masks": 0, "num_feat_extract_layers": len(self.conv_dim), "initializer_range": 0.02,
            "torch_dtype": "float32", "transformers_version": "4.27.3", "use_weighted_layer_sum": False,
            "vocab_size": 32, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
            "ctc_loss_reduction": "sum", "ctc_zero_infinity": False,
        })
        return d


HUBERT = HubertConfig()


@dataclass(frozen=True)
class SynthConfig:
    """An RVC synthesizer: the checkpoint's 18-item `config` list plus f0 / version / vocoder."""

    spec_channels: int
    segment_size: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    p_dropout: float
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    spk_embed_dim: int
    gin_channels: int
    sr: int
    use_f0: bool = True
    version: str = "v2"
    vocoder: str = "HiFi-GAN"
    # fixed by the original code, not by the config list
    window_size: int = 10  # relative attention window
    flow_kernel: int = 5
    flow_dilation: int = 1
    flow_layers: int = 3
    n_flows: int = 4
    lrelu_slope: float = 0.1
    sine_amp: float = 0.1
    noise_std: float = 0.003
    prior_noise_scale: float = 0.66666

    FIELDS = ("spec_channels", "segment_size", "inter_channels", "hidden_channels", "filter_channels", "n_heads",
              "n_layers", "kernel_size", "p_dropout", "resblock", "resblock_kernel_sizes",
              "resblock_dilation_sizes", "upsample_rates", "upsample_initial_channel", "upsample_kernel_sizes",
              "spk_embed_dim", "gin_channels", "sr")

    @property
    def text_enc_hidden_dim(self) -> int:
        return 768 if self.version == "v2" else 256

    @property
    def upp(self) -> int:
        """Output samples per frame (product of the upsample rates)."""
        n = 1
        for u in self.upsample_rates:
            n *= u
        return n

    @property
    def variant(self) -> str:
        return f"{self.version}-{self.sr // 1000}k-{'f0' if self.use_f0 else 'nof0'}"

    @classmethod
    def from_list(cls, config: list, use_f0: bool = True, version: str = "v2", vocoder: str = "HiFi-GAN",
                  source: str = "config") -> "SynthConfig":
        """Parse RVC's 18-item config list (order as written by the original's extract_model)."""
        if not isinstance(config, (list, tuple)) or len(config) != len(cls.FIELDS):
            n = len(config) if isinstance(config, (list, tuple)) else type(config).__name__
            raise ConfigError(f"{source}: expected the 18-item RVC config list, got {n} items")
        d = dict(zip(cls.FIELDS, config, strict=True))
        try:
            d["resblock_kernel_sizes"] = tuple(int(k) for k in d["resblock_kernel_sizes"])
            d["resblock_dilation_sizes"] = tuple(tuple(int(x) for x in ds) for ds in d["resblock_dilation_sizes"])
            d["upsample_rates"] = tuple(int(u) for u in d["upsample_rates"])
            d["upsample_kernel_sizes"] = tuple(int(k) for k in d["upsample_kernel_sizes"])
            for k in ("spec_channels", "segment_size", "inter_channels", "hidden_channels", "filter_channels",
                      "n_heads", "n_layers", "kernel_size", "upsample_initial_channel", "spk_embed_dim",
                      "gin_channels", "sr"):
                d[k] = int(d[k])
            d["p_dropout"] = float(d["p_dropout"])
            d["resblock"] = str(d["resblock"])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: malformed config list ({e})") from None
        if version not in ("v1", "v2"):
            raise ConfigError(f"{source}: version {version!r} is neither v1 nor v2")
        if vocoder != "HiFi-GAN":
            raise ConfigError(f"{source}: vocoder {vocoder!r} is not supported (HiFi-GAN only; Applio's "
                              "MRF HiFi-GAN and RefineGAN are not ported)")
        if d["resblock"] != "1":
            raise ConfigError(f"{source}: resblock {d['resblock']!r} is not supported (RVC uses \"1\")")
        if len(d["upsample_rates"]) != len(d["upsample_kernel_sizes"]):
            raise ConfigError(f"{source}: upsample_rates and upsample_kernel_sizes differ in length")
        if len(d["resblock_kernel_sizes"]) != len(d["resblock_dilation_sizes"]):
            raise ConfigError(f"{source}: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if d["hidden_channels"] % d["n_heads"]:
            raise ConfigError(f"{source}: hidden_channels not divisible by n_heads")
        return cls(**d, use_f0=bool(use_f0), version=version, vocoder=vocoder)

    def to_list(self) -> list:
        out = []
        for f in self.FIELDS:
            v = getattr(self, f)
            if isinstance(v, tuple):
                v = [list(x) if isinstance(x, tuple) else x for x in v]
            out.append(v)
        return out


def _rvc_config(sr: int, v1_webui: bool = False) -> list:
    """The training configs: Applio's rvc/configs/<sr>.json (v1 and v2 alike) or RVC-WebUI's v1 layouts."""
    rates, kernels, filt = {
        (32000, False): ([10, 8, 2, 2], [20, 16, 4, 4], 1024),
        (40000, False): ([10, 10, 2, 2], [16, 16, 4, 4], 2048),
        (48000, False): ([12, 10, 2, 2], [24, 20, 4, 4], 2048),
        (32000, True): ([10, 4, 2, 2, 2], [16, 16, 4, 4, 4], 1024),
        (48000, True): ([10, 6, 2, 2, 2], [16, 16, 4, 4, 4], 2048),
    }[(sr, v1_webui)]
    return [filt // 2 + 1, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            rates, 512, kernels, 109, 256, sr]


def synth_variants() -> dict[str, SynthConfig]:
    """Every supported variant: v1/v2 x 32/40/48 kHz x f0/no-f0, plus RVC-WebUI's 5-stage v1 32k/48k."""
    out = {}
    for version in ("v1", "v2"):
        for sr in (32000, 40000, 48000):
            for f0 in (True, False):
                cfg = SynthConfig.from_list(_rvc_config(sr), use_f0=f0, version=version)
                out[cfg.variant] = cfg
    for sr in (32000, 48000):
        cfg = SynthConfig.from_list(_rvc_config(sr, v1_webui=True), use_f0=True, version="v1")
        out[cfg.variant.replace("v1-", "v1webui-")] = cfg
    return out
