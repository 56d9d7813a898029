//! The variant space of the RoPE kernels: [`Variant`] and its pipeline keys.

#[cfg(doc)]
use super::{HeadNorm, Rope};
use super::{Layout, SinCos, WG};
use crate::kv_format::KvFormat;
use crate::pipeline::{PipelineKey, Shader};
use crate::tensor::DType;

/// The code-shaping decisions for one dispatch; the pipeline key is derived from it alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Storage dtype.
    pub dtype: DType,
    /// Which elements pair up.
    pub layout: Layout,
    /// Positions come from a buffer.
    pub pos_buf: bool,
    /// Rotate in place.
    pub in_place: bool,
    /// Out of place with x read from the destination binding (x and out are one view).
    pub x_in_dst: bool,
    /// How cos and sin are computed: always exact, but for the benchmark's comparisons.
    pub(crate) sincos: SinCos,
    /// The `rope_vec4` entry point (in place, 16-byte aligned heads; see [`Rope::variant`]).
    pub vec4: bool,
    /// The `rope_norm` entry point (a per-head RMSNorm before the rotation, [`HeadNorm`]).
    pub norm: bool,
    /// f16 stores through WGSL's `pack2x16float` ([`Shader::ROPE_F16_STORE`]) instead of the
    /// exact integer encoder; f16 only (see [`Rope::native_f16_store`]).
    pub f16_store: bool,
    /// The `rope_q` entry point ([`Shader::ROPE_Q`]): the rotated rows (normalised first when
    /// a norm is given, a runtime flag there) quantized into a KV cache of this format, out of
    /// place, one invocation per (token, head); `None` for the float outputs.
    pub kv_format: Option<KvFormat>,
}

impl Variant {
    /// The entry point, with `_f16_store` when f16 is stored through `pack2x16float`:
    /// `rope_vec4`, `rope`, `rope_norm`, `rope_q`, `rope_vec4_f16_store`, ...
    pub fn name(&self) -> String {
        let store = if self.f16_store { "_f16_store" } else { "" };
        format!("{}{store}", self.entry_point())
    }

    fn entry_point(&self) -> &'static str {
        if self.kv_format.is_some() {
            return "rope_q";
        }
        match (self.vec4, self.norm) {
            (true, _) => "rope_vec4",
            (false, true) => "rope_norm",
            (false, false) => "rope",
        }
    }

    /// The pipeline key of this variant.
    pub fn key(&self) -> PipelineKey {
        let mut constants = vec![
            ("DTYPE", self.dtype.shader_code()),
            ("LAYOUT", (self.layout == Layout::Interleaved) as u32),
            ("POS_BUF", self.pos_buf as u32),
            ("IN_PLACE", self.in_place as u32),
            ("X_IN_DST", self.x_in_dst as u32),
            ("SINCOS", self.sincos.code()),
            ("WG", WG),
        ];
        let shader = match (self.kv_format, self.f16_store) {
            (Some(f), _) => {
                constants.push(("KV_FMT", f.shader_code()));
                Shader::ROPE_Q
            }
            (None, true) => Shader::ROPE_F16_STORE,
            (None, false) => Shader::ROPE,
        };
        PipelineKey::new(shader, self.entry_point(), constants)
    }
}

/// Every pipeline key the dispatcher can produce with the integer encoder ([`Shader::ROPE`];
/// the portability tests compile each).
pub fn all_variant_keys() -> Vec<PipelineKey> {
    variant_keys(&DType::ALL, false)
}

/// The keys of [`Shader::ROPE_F16_STORE`]: every f16 key of [`all_variant_keys`], storing
/// through `pack2x16float`.
pub fn f16_store_variant_keys() -> Vec<PipelineKey> {
    variant_keys(&[DType::F16], true)
}

/// The keys of [`Shader::ROPE_Q`] (`rope_q`, exact sin/cos): every source dtype, layout,
/// position source and quantized format.
pub fn quantized_variant_keys() -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for dtype in DType::ALL {
        for layout in [Layout::Half, Layout::Interleaved] {
            for pos_buf in [false, true] {
                for f in KvFormat::QUANTIZED {
                    keys.push(
                        Variant {
                            dtype,
                            layout,
                            pos_buf,
                            in_place: false,
                            x_in_dst: false,
                            sincos: SinCos::Exact,
                            vec4: false,
                            norm: false,
                            f16_store: false,
                            kv_format: Some(f),
                        }
                        .key(),
                    );
                }
            }
        }
    }
    keys
}

fn variant_keys(dtypes: &[DType], f16_store: bool) -> Vec<PipelineKey> {
    let mut keys = Vec::new();
    for &dtype in dtypes {
        for layout in [Layout::Half, Layout::Interleaved] {
            for pos_buf in [false, true] {
                for (in_place, x_in_dst) in [(true, false), (false, false), (false, true)] {
                    for sincos in [
                        SinCos::Exact,
                        SinCos::BuiltinReduced,
                        SinCos::NaiveF32,
                        SinCos::HostTable,
                    ] {
                        for (vec4, norm) in [(false, false), (true, false), (false, true)] {
                            // `rope_vec4` rotates in place only; the benchmark's sin/cos methods
                            // are not compared with a norm.
                            if (vec4 && !in_place) || (norm && sincos != SinCos::Exact) {
                                continue;
                            }
                            keys.push(
                                Variant {
                                    dtype,
                                    layout,
                                    pos_buf,
                                    in_place,
                                    x_in_dst,
                                    sincos,
                                    vec4,
                                    norm,
                                    f16_store,
                                    kv_format: None,
                                }
                                .key(),
                            );
                        }
                    }
                }
            }
        }
    }
    keys
}
