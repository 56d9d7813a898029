// Bench-only f32 matmul, the compute ceiling prefill attention is compared with:
// c[m, n] = sum_k a[m, k] * b[k, n], all row-major and contiguous. Not a library kernel.
//
// Two tilings (entry points), each specialised by override constants:
// - `matmul_reg`: register tiling with no workgroup memory. Each invocation owns TM rows x one
//   vec4 of columns and streams K; neighbouring invocations along x share the A values (one
//   uniform load) and read consecutive vec4s of B. CPU adapters (one SIMD lane per invocation)
//   like this shape.
// - `matmul_tiled`: the classic GPU tiling (CUTLASS / "How to optimize a CUDA matmul"): a
//   workgroup of 16 x 16 computes a 64 x 64 tile of c (each invocation 4 rows x one vec4),
//   staging 64 x 16 of A and 16 x 64 of B in workgroup memory per K step.
//
// Override constants:
//   TM    rows per invocation of `matmul_reg` (1..=8)
//   WGX   invocations along n (vec4 columns) of `matmul_reg`
//   WGY   invocations along m of `matmul_reg`

override TM: u32 = 4u;
override WGX: u32 = 8u;
override WGY: u32 = 8u;

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

@compute @workgroup_size(WGX, WGY)
fn matmul_reg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let n4 = p.n / 4u;
    let col = wid.x * WGX + lid.x;
    let row0 = (wid.y * WGY + lid.y) * TM;
    // No barrier in this entry point, so a non-uniform return is fine.
    if col >= n4 || row0 >= p.m {
        return;
    }
    var acc: array<vec4<f32>, 8>;
    for (var i = 0u; i < TM; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = b[kk * n4 + col];
        for (var i = 0u; i < TM; i++) {
            acc[i] += a[(row0 + i) * p.k + kk] * bv;
        }
    }
    for (var i = 0u; i < TM; i++) {
        c[(row0 + i) * n4 + col] = acc[i];
    }
}

const TILE_M: u32 = 64u;
const TILE_K: u32 = 16u;
// 16 vec4 columns = 64 columns of c per workgroup.
const TILE_N4: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>;       // TILE_M x TILE_K
var<workgroup> b_tile: array<vec4<f32>, 256>;  // TILE_K x TILE_N4

// Requires m % 64 == 0, n % 64 == 0 and k % 16 == 0 (the host checks), so every invocation
// reaches every barrier.
@compute @workgroup_size(16, 16)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let n4 = p.n / 4u;
    let col = wid.x * TILE_N4 + lid.x;
    let tile_row = wid.y * TILE_M;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        // 1024 A values and 256 B vec4s over 256 invocations.
        for (var j = 0u; j < 4u; j++) {
            let e = li + j * 256u;
            let r = e / TILE_K;
            let kk = e % TILE_K;
            a_tile[e] = a[(tile_row + r) * p.k + k0 + kk];
        }
        b_tile[li] = b[(k0 + li / TILE_N4) * n4 + wid.x * TILE_N4 + li % TILE_N4];
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let bv = b_tile[kk * TILE_N4 + lid.x];
            for (var i = 0u; i < 4u; i++) {
                acc[i] += a_tile[(lid.y * 4u + i) * TILE_K + kk] * bv;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        c[(tile_row + lid.y * 4u + i) * n4 + col] = acc[i];
    }
}
