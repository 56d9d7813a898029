//! Shader portability, on the CPU with no adapter: every shader and every variant the dispatchers
//! can pick parses and validates with naga, has its override constants applied, and translates
//! to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES 3.1 (GL). This is the evidence for
//! backends that CI does not have.

use std::collections::HashMap;

use llama_kernels::ops::attention;
use llama_kernels::pipeline::{naga_source, reflect, Access, PipelineKey, Shader, F16_IN_F32};

/// The library's shaders and the benchmark's.
fn all_shaders() -> Vec<&'static Shader> {
    Shader::ALL
        .iter()
        .chain(llama_kernels::bench::SHADERS)
        .copied()
        .collect()
}

fn validator() -> naga::valid::Validator {
    validator_for(false)
}

/// What the devices that create a module offer: SUBGROUP and SHADER_FLOAT16 (each module checks
/// its own features), plus `SHADER_FLOAT16_IN_FLOAT32` (`pack2x16float`) for the modules of
/// `pipeline::F16_IN_F32` only, which their ops create only on devices with it.
fn validator_for(f16_in_f32: bool) -> naga::valid::Validator {
    let mut caps = naga::valid::Capabilities::SUBGROUP | naga::valid::Capabilities::SHADER_FLOAT16;
    if f16_in_f32 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    v.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
    v.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    v
}

/// A module text parsed and validated (or why not), shared by the variants that use that text.
type Parsed = Result<(naga::Module, naga::valid::ModuleInfo), String>;

fn parse_and_validate(src: &str, f16_in_f32: bool) -> Parsed {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let info = validator_for(f16_in_f32)
        .validate(&module)
        .map_err(|e| format!("validate: {e:?}"))?;
    Ok((module, info))
}

/// Translate one variant. Variants of a module differ in their override values and, for key
/// constants, in their text; each distinct text is parsed and validated once (`parsed`).
fn translate(key: &PipelineKey, parsed: &mut HashMap<String, Parsed>) -> Result<(), String> {
    let src = naga_source(&key.source()).into_owned();
    let f16_in_f32 = F16_IN_F32.contains(&key.shader);
    let (module, info) = parsed
        .entry(src.clone())
        .or_insert_with(|| parse_and_validate(&src, f16_in_f32))
        .as_ref()
        .map_err(Clone::clone)?;
    let mut constants = naga::back::PipelineConstants::default();
    for (name, value) in key.overrides() {
        constants.insert(name.to_string(), value as f64);
    }
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((naga::ShaderStage::Compute, key.entry_point)),
        &constants,
    )
    .map_err(|e| format!("overrides: {e}"))?;
    // After specialisation the module must still validate.
    validator_for(f16_in_f32)
        .validate(&module)
        .map_err(|e| format!("validate after overrides: {e:?}"))?;

    let spv_opts = naga::back::spv::Options::default();
    let spv_pipe = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: key.entry_point.to_string(),
    };
    naga::back::spv::write_vec(&module, &info, &spv_opts, Some(&spv_pipe))
        .map_err(|e| format!("spir-v: {e}"))?;

    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 1),
        ..Default::default()
    };
    let msl_pipe = naga::back::msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, key.entry_point.to_string())),
        ..Default::default()
    };
    naga::back::msl::write_string(&module, &info, &msl_opts, &msl_pipe)
        .map_err(|e| format!("msl: {e}"))?;

    // `enable f16` modules (the opt-in f16-arithmetic prefill): wgpu offers SHADER_F16 on DX12
    // only with shader model 6.2, and never on GL, whose naga backend has no f16.
    let f16 = src.starts_with("enable f16;");
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: if f16 {
            naga::back::hlsl::ShaderModel::V6_2
        } else {
            naga::back::hlsl::ShaderModel::V6_0
        },
        ..Default::default()
    };
    let hlsl_pipe = naga::back::hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, key.entry_point.to_string())),
    };
    let mut hlsl = String::new();
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe)
        .write(&module, &info, None)
        .map_err(|e| format!("hlsl: {e}"))?;

    if f16 {
        return Ok(());
    }
    let glsl_opts = naga::back::glsl::Options::default();
    let glsl_pipe = naga::back::glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: key.entry_point.to_string(),
        multiview: None,
    };
    let mut glsl = String::new();
    naga::back::glsl::Writer::new(
        &mut glsl,
        &module,
        &info,
        &glsl_opts,
        &glsl_pipe,
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .map_err(|e| format!("glsl: {e}"))?;
    Ok(())
}

#[test]
fn every_shader_variant_translates_to_every_backend() {
    let mut failures = Vec::new();
    let mut count = 0;
    let mut parsed = HashMap::new();
    for shader in all_shaders() {
        let variants = shader.variants();
        assert!(!variants.is_empty(), "{shader:?} lists no variants");
        for key in variants {
            count += 1;
            if let Err(e) = translate(&key, &mut parsed) {
                failures.push(format!(
                    "{:?} {} {:?}: {e}",
                    key.shader, key.entry_point, key.constants
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} variants failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{count} variants ({} module texts) translated to SPIR-V, MSL, HLSL and GLSL",
        parsed.len()
    );
}

/// The modules of `pipeline::F16_IN_F32` (f16 stores through `pack2x16float`) are the only
/// ones given `SHADER_FLOAT16_IN_FLOAT32` above: each of them fails without it, so the list is
/// not a blanket; every other module validates without it in the test above.
#[test]
fn only_the_f16_store_modules_need_f16_in_f32() {
    for shader in F16_IN_F32 {
        assert!(Shader::ALL.contains(&shader), "{}", shader.name);
        let src = naga_source(&shader.source()).into_owned();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        assert!(
            validator_for(true).validate(&module).is_ok(),
            "{}",
            shader.name
        );
        assert!(
            validator().validate(&module).is_err(),
            "{} validates without SHADER_FLOAT16_IN_FLOAT32: drop it from F16_IN_F32",
            shader.name
        );
    }
}

/// The test above must be able to fail: a shader with a type error is caught.
#[test]
fn a_broken_shader_is_caught() {
    let src = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    let parsed = naga::front::wgsl::parse_str(src);
    let bad = match parsed {
        Err(_) => true,
        Ok(m) => validator().validate(&m).is_err(),
    };
    assert!(bad);
}

/// Every override constant a key sets exists in its shader (a misspelt constant would otherwise
/// silently keep its default).
#[test]
fn keys_only_set_declared_overrides() {
    for shader in all_shaders() {
        let src = shader.source();
        let module = naga::front::wgsl::parse_str(&naga_source(&src)).unwrap();
        let declared: Vec<String> = module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.clone())
            .collect();
        for key in shader.variants() {
            // Key constants (`// @key` lines) are applied to the source; the rest must be
            // declared overrides.
            for (name, _) in key.overrides() {
                assert!(
                    declared.iter().any(|d| *d == name),
                    "{shader:?}: key sets undeclared override {name}"
                );
            }
        }
    }
}

/// Size of WGSL struct `name` in `shader`, as naga lays it out.
fn wgsl_struct_size(shader: &Shader, name: &str) -> u32 {
    let module = naga::front::wgsl::parse_str(&naga_source(&shader.source())).unwrap();
    let size = module
        .types
        .iter()
        .find_map(|(_, ty)| match (&ty.inner, ty.name.as_deref()) {
            (naga::TypeInner::Struct { span, .. }, Some(n)) if n == name => Some(*span),
            _ => None,
        });
    size.unwrap_or_else(|| panic!("no struct {name} in {shader:?}"))
}

/// Every `#[repr(C)]` params struct has the size of the WGSL struct it is uploaded into, and is
/// padded to 16 bytes (uniform buffer rules). Member-by-member checks live beside the ops.
#[test]
fn params_structs_match_wgsl() {
    use llama_kernels::ops;
    use std::mem::size_of;
    let cases: [(&Shader, usize); 6] = [
        (Shader::RMS_NORM, size_of::<ops::rms_norm::Params>()),
        (Shader::CAST, size_of::<ops::cast::Params>()),
        (Shader::ROPE, size_of::<ops::rope::Params>()),
        (
            Shader::ATTENTION_PREFILL,
            size_of::<ops::attention::Params>(),
        ),
        (
            Shader::ATTENTION_DECODE,
            size_of::<ops::attention::Params>(),
        ),
        (Shader::KV_CACHE, size_of::<ops::kv_cache::Params>()),
    ];
    for (shader, rust) in cases {
        assert_eq!(
            wgsl_struct_size(shader, "Params") as usize,
            rust,
            "{shader:?} Params"
        );
        assert_eq!(rust % 16, 0, "{shader:?} Params is not padded to 16 bytes");
    }
}

/// The launch path finds binding numbers by name through naga reflection: every entry point of
/// every shader reflects, binds at most one uniform (the params), and names each used binding
/// once.
#[test]
fn every_entry_point_reflects_its_bindings() {
    for shader in all_shaders() {
        let src = shader.source();
        let mut entries: Vec<&str> = shader.variants().iter().map(|k| k.entry_point).collect();
        entries.sort();
        entries.dedup();
        for ep in entries {
            let (slots, declared) =
                reflect(&src, ep).unwrap_or_else(|e| panic!("{}: {e}", shader.name));
            assert!(!slots.is_empty(), "{} {ep}: no bindings", shader.name);
            let uniforms = slots.iter().filter(|s| s.access == Access::Uniform).count();
            assert!(uniforms <= 1, "{} {ep}: {uniforms} uniforms", shader.name);
            // WebGPU's default maxStorageBuffersPerShaderStage (the attention kernels read
            // sinks and masks through one binding to stay within it).
            let storage = slots.len() - uniforms;
            assert!(
                storage <= 8,
                "{} {ep}: {storage} storage bindings",
                shader.name
            );
            for s in &slots {
                assert!(declared.contains(&s.name));
                assert_eq!(slots.iter().filter(|o| o.binding == s.binding).count(), 1);
            }
        }
    }
    assert!(reflect("@compute @workgroup_size(1) fn main() {}", "nope").is_err());
}

/// f32 in one value of type `ty`.
fn f32s(m: &naga::Module, ty: naga::Handle<naga::Type>) -> u32 {
    use naga::TypeInner as T;
    match &m.types[ty].inner {
        T::Scalar(_) => 1,
        T::Vector { size, .. } => *size as u32,
        T::Matrix { columns, rows, .. } => *columns as u32 * *rows as u32,
        T::Array {
            base,
            size: naga::ArraySize::Constant(n),
            ..
        } => n.get() * f32s(m, *base),
        T::Struct { members, .. } => members.iter().map(|x| f32s(m, x.ty)).sum(),
        _ => 0,
    }
}

/// The functions `block` calls, directly or through the functions it calls, into `out`.
fn calls(m: &naga::Module, block: &naga::Block, out: &mut Vec<naga::Handle<naga::Function>>) {
    use naga::Statement as S;
    for st in block.iter() {
        match st {
            S::Call { function, .. } if !out.contains(function) => {
                out.push(*function);
                calls(m, &m.functions[*function].body, out);
            }
            S::Block(b) => calls(m, b, out),
            S::If { accept, reject, .. } => {
                calls(m, accept, out);
                calls(m, reject, out);
            }
            S::Switch { cases, .. } => cases.iter().for_each(|c| calls(m, &c.body, out)),
            S::Loop {
                body, continuing, ..
            } => {
                calls(m, body, out);
                calls(m, continuing, out);
            }
            _ => {}
        }
    }
}

/// Every private array of `key`'s entry point and the functions it calls that is not sized
/// by one of `sizes` (the lengths of each array level), and every one holding more than 64
/// f32, as "function: variable ...".
fn private_array_faults(key: &PipelineKey, sizes: &[u32]) -> Vec<String> {
    let m = naga::front::wgsl::parse_str(&naga_source(&key.source())).expect("parses");
    let entry = m
        .entry_points
        .iter()
        .find(|e| e.name == key.entry_point)
        .expect("entry point");
    let mut reached = Vec::new();
    calls(&m, &entry.function.body, &mut reached);
    let mut faults = Vec::new();
    let mut check = |f: &naga::Function, fname: &str| {
        for (_, v) in f.local_variables.iter() {
            let name = format!("{fname}: {}", v.name.as_deref().unwrap_or("?"));
            let mut ty = v.ty;
            let mut is_array = false;
            while let naga::TypeInner::Array { base, size, .. } = &m.types[ty].inner {
                is_array = true;
                match size {
                    naga::ArraySize::Constant(n) if sizes.contains(&n.get()) => {}
                    _ => faults.push(format!("{name} has a dimension {size:?}")),
                }
                ty = *base;
            }
            if is_array && f32s(&m, v.ty) > 64 {
                faults.push(format!("{name} holds {} f32", f32s(&m, v.ty)));
            }
        }
    };
    for f in reached {
        let f = &m.functions[f];
        check(f, f.name.as_deref().unwrap_or("?"));
    }
    check(&entry.function, &entry.name);
    for (_, g) in m.global_variables.iter() {
        if g.space == naga::AddressSpace::Private {
            faults.push(format!("private global {:?}", g.name));
        }
    }
    faults
}

/// The subgroup prefill (contiguous and paged) keeps no dynamically indexed private memory:
/// at every declared key each private array is sized by the key constants `R` or `SLOTS` (the loops that index
/// them run from 0 to those constants, so they unroll into registers) and holds at most 64
/// f32, and the accumulators stay within `PREFILL_SG_MAX_ACC`. The tiled prefill, whose q,
/// accumulator and score arrays are sized by the head_dim class and the tile, fails the same
/// check.
#[test]
fn subgroup_prefill_has_no_dynamically_indexed_private_array() {
    let mut keys = attention::ATTENTION_PREFILL_SUBGROUP.variants();
    keys.extend(llama_kernels::ops::paged::ATTENTION_PAGED_PREFILL_SUBGROUP.variants());
    assert!(!keys.is_empty());
    let mut shapes = std::collections::HashSet::new();
    let entries = ["attn_prefill_sg", "attn_paged_prefill_sg"];
    for key in keys.iter().filter(|k| entries.contains(&k.entry_point)) {
        let (r, slots) = (key.constant("R").unwrap(), key.constant("SLOTS").unwrap());
        if !shapes.insert((key.entry_point, r, slots)) {
            continue;
        }
        let c = &key.constants;
        assert!(r * slots * 4 <= attention::PREFILL_SG_MAX_ACC, "{c:?}");
        let faults = private_array_faults(key, &[r, slots]);
        assert!(faults.is_empty(), "{c:?}: {faults:?}");
    }
    assert!(shapes.len() >= 8, "{shapes:?}");
    let old = attention::prefill_variant_keys()
        .into_iter()
        .find(|k| k.entry_point == "attn_prefill")
        .unwrap();
    assert!(!private_array_faults(&old, &[1, 4]).is_empty());
}
