//! How the kernel gets cos and sin. Only [`SinCos::Exact`] is reachable from the public API;
//! the benchmark (`bench::with_sincos`) sets the others to measure what the exact method costs.

/// How the kernel evaluates cos and sin. Only [`SinCos::Exact`] meets the accuracy target; the
/// others exist to measure what it buys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SinCos {
    /// Fixed-point angle, own polynomials (the default).
    #[default]
    Exact,
    /// Fixed-point angle reduced to [-pi, pi], then WGSL's `cos` / `sin`.
    BuiltinReduced,
    /// `f32(pos) * f32(inv_freq)`, then WGSL's `cos` / `sin` (what most frameworks do).
    NaiveF32,
    /// A `[seq_len, rotary_dim/2]` cos/sin table built in f64 on the host at every call and
    /// indexed by position (positions must lie in `0..seq_len`, and are not checked on the
    /// GPU): the table alternative, kept to measure it.
    HostTable,
}

impl SinCos {
    pub(crate) fn code(self) -> u32 {
        match self {
            SinCos::Exact => 0,
            SinCos::BuiltinReduced => 1,
            SinCos::NaiveF32 => 2,
            SinCos::HostTable => 3,
        }
    }
}
