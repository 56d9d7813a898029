// Streaming copies: dst = src. The benchmark runs them beside the kernels as the bandwidth ceiling
// that a WGSL kernel can reach on this device (the best of them is `fraction_of_wgsl_copy`'s
// denominator). Each workgroup copies one block of WG * PER items; invocation `lid` copies items
// `lid, lid + WG, ...`, so every step of the loop touches one contiguous run of WG items.
//
// Override constants (set by `ops::copy::Variant`):
//   WG    workgroup size
//   PER   items (u32 words, or vec4<u32> for the vec4 entry point) per invocation
//
// `n` and the offsets count items of the entry point's type; grids above 65535 workgroups are 2-D.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): by 1 to the constant
// PER.

override WG: u32 = 256u;
override PER: u32 = 1u;

struct Params {
    n: u32,
    src_off: u32,
    dst_off: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
@group(0) @binding(3) var<storage, read> src4: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> dst4: array<vec4<u32>>;

@compute @workgroup_size(WG)
fn copy_scalar(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let base = linear_workgroup(wid, nwg) * WG * PER + lid;
    for (var k = 0u; k < PER; k++) {
        let i = base + k * WG;
        if i < p.n {
            dst[p.dst_off + i] = src[p.src_off + i];
        }
    }
}

@compute @workgroup_size(WG)
fn copy_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let base = linear_workgroup(wid, nwg) * WG * PER + lid;
    for (var k = 0u; k < PER; k++) {
        let i = base + k * WG;
        if i < p.n {
            dst4[p.dst_off + i] = src4[p.src_off + i];
        }
    }
}
