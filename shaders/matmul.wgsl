// Bench-only f32 matmul, the compute ceiling prefill attention is compared with:
// c[m, n] = sum_k a[m, k] * b[k, n], all row-major and contiguous. Not a library kernel.
//
// Two tilings (entry points), each specialised by override constants:
// - `matmul_reg`: register tiling with no workgroup memory. Each invocation owns TM rows x one
//   vec4 of columns and streams K; neighbouring invocations along x share the A values (one
//   uniform load) and read consecutive vec4s of B. CPU adapters (one SIMD lane per invocation)
//   like this shape.
// - `matmul_mat4`: register tiling written for llvmpipe the way `attn_prefill_keys` is: a
//   workgroup of 8 invocations (llvmpipe's SIMD width) covers 16 rows x 64 columns, each
//   invocation 16 rows x 8 columns as eight 4x4 tiles held in named mat4x4 registers (llvmpipe
//   does not unroll these loops, so a loop-indexed private array would live in memory). Per 4
//   values of k: 16 vec4 loads of A and 8 of B feed eight 4x4 x 4x4 products (128 vec4 FMAs).
// - `matmul_tiled`: the classic GPU tiling (CUTLASS / "How to optimize a CUDA matmul"): a
//   workgroup of 16 x 16 computes a 64 x 64 tile of c (each invocation 4 rows x one vec4),
//   staging 64 x 16 of A and 16 x 64 of B in workgroup memory per K step.
//
// Override constants:
//   TM    rows per invocation of `matmul_reg` (1..=8)
//   WGX   invocations along n (vec4 columns) of `matmul_reg`
//   WGY   invocations along m of `matmul_reg`
// Loops (modules are created without naga's loop counters, src/pipeline.rs): by 1 or by the
// constant TILE_K to uniform bounds.

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
// The same buffer as `a`, read 4 values of k at a time.
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;

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

// Rows of A r .. r + 4 at vec4 kk of k, as the columns of a matrix.
fn a_rows(r: u32, k4: u32, kk: u32) -> mat4x4<f32> {
    return mat4x4<f32>(a4[r * k4 + kk], a4[(r + 1u) * k4 + kk], a4[(r + 2u) * k4 + kk], a4[(r + 3u) * k4 + kk]);
}

// Rows of B k .. k + 4 at vec4 column col, as the columns of a matrix.
fn b_rows(k: u32, n4: u32, col: u32) -> mat4x4<f32> {
    return mat4x4<f32>(b[k * n4 + col], b[(k + 1u) * n4 + col], b[(k + 2u) * n4 + col], b[(k + 3u) * n4 + col]);
}

// Column j of t is row r + j of c at vec4 column col.
fn store_tile(r: u32, n4: u32, col: u32, t: mat4x4<f32>) {
    c[r * n4 + col] = t[0];
    c[(r + 1u) * n4 + col] = t[1];
    c[(r + 2u) * n4 + col] = t[2];
    c[(r + 3u) * n4 + col] = t[3];
}

// Requires m % 16 == 0, n % 64 == 0 and k % 4 == 0 (the host checks). With B's rows k .. k + 4
// as the columns of Bm and A's rows as the columns of Am, (Bm * Am)[j] = sum_k A[j, k] B[k, :]:
// row j of the 4x4 block of c.
@compute @workgroup_size(8)
fn matmul_mat4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n4 = p.n / 4u;
    let k4 = p.k / 4u;
    let r = wid.y * 16u;
    let col = wid.x * 16u + lid * 2u;
    var c00 = mat4x4<f32>();
    var c01 = mat4x4<f32>();
    var c10 = mat4x4<f32>();
    var c11 = mat4x4<f32>();
    var c20 = mat4x4<f32>();
    var c21 = mat4x4<f32>();
    var c30 = mat4x4<f32>();
    var c31 = mat4x4<f32>();
    for (var kk = 0u; kk < k4; kk++) {
        let b0 = b_rows(4u * kk, n4, col);
        let b1 = b_rows(4u * kk, n4, col + 1u);
        let a0 = a_rows(r, k4, kk);
        c00 += b0 * a0;
        c01 += b1 * a0;
        let a1 = a_rows(r + 4u, k4, kk);
        c10 += b0 * a1;
        c11 += b1 * a1;
        let a2 = a_rows(r + 8u, k4, kk);
        c20 += b0 * a2;
        c21 += b1 * a2;
        let a3 = a_rows(r + 12u, k4, kk);
        c30 += b0 * a3;
        c31 += b1 * a3;
    }
    store_tile(r, n4, col, c00);
    store_tile(r, n4, col + 1u, c01);
    store_tile(r + 4u, n4, col, c10);
    store_tile(r + 4u, n4, col + 1u, c11);
    store_tile(r + 8u, n4, col, c20);
    store_tile(r + 8u, n4, col + 1u, c21);
    store_tile(r + 12u, n4, col, c30);
    store_tile(r + 12u, n4, col + 1u, c31);
}
