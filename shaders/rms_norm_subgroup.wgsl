// Appended to rms_norm.wgsl in a module of its own (`ops::rms_norm::RMS_NORM_SUBGROUP`): a module
// that uses subgroup operations anywhere fails validation on devices without SUBGROUP.
//
// `rms_norm_wg4` with the reduction done as GPU norm kernels do it (Apex's `cuWelfordMuSigma2`,
// PyTorch's and llm.c's warp reductions): `subgroupAdd` within each subgroup, one workgroup-memory
// slot per subgroup, one barrier, then every invocation adds the slots in the same fixed order.
// No subgroup size is assumed: the slots are counted by `num_subgroups`.
// Loops (modules are created without naga's loop counters, src/pipeline.rs): by 1 to num_subgroups.
@compute @workgroup_size(WG)
fn rms_norm_wg4_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let row = linear_workgroup(wid, nwg);
    // Uniform per workgroup, so returning before the barrier and the subgroup operation is
    // allowed.
    if row >= p.n_rows {
        return;
    }
    let s = subgroupAdd(sum_squares4(row, lid, WG));
    if sg_lane == 0u {
        partial[sg_id] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < n_sg; i++) {
        total += partial[i];
    }
    scale4(row, lid, WG, 1.0 / sqrt(total / f32(p.n) + p.eps));
}
