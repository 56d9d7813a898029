use super::*;

#[test]
fn shader_file_table_matches_the_folder() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .expect("shaders/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SHADER_FILES.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn a_line_of_a_joined_module_maps_to_its_file() {
    let s = Shader::ATTENTION_DECODE;
    let mut line = 1;
    for part in s.parts {
        let (file, at) = s.locate(line);
        let (name, text) = SHADER_FILES
            .iter()
            .find(|(_, t)| t == part)
            .expect("every decode part is a file");
        assert_eq!((file.as_str(), at), (format!("shaders/{name}").as_str(), 1));
        let n = text.matches('\n').count() + 1;
        assert_eq!(s.locate(line + n - 1), (format!("shaders/{name}"), n));
        line += n;
    }
}

#[test]
fn key_constants_are_substituted_line_for_line() {
    static K: Shader = Shader {
        name: "k.wgsl",
        parts: &[
            "const RS: u32 = 4u; // @key\noverride WG: u32 = 8u;\nconst OTHER: u32 = 2u;",
            "const SLOTS: u32 = 1u; // @key\nfn f() -> u32 { return RS * SLOTS * OTHER; }",
        ],
        variants: Vec::new,
    };
    let key = PipelineKey::new(&K, "f", vec![("RS", 8), ("WG", 64), ("SLOTS", 3)]);
    let src = key.source();
    assert!(src.contains("const RS: u32 = 8u; // @key\n"), "{src}");
    assert!(src.contains("const SLOTS: u32 = 3u; // @key\n"), "{src}");
    assert!(src.contains("override WG: u32 = 8u;"), "{src}");
    assert!(src.contains("const OTHER: u32 = 2u;"), "{src}");
    assert_eq!(src.lines().count(), K.source().lines().count());
    assert_eq!(key.overrides(), vec![("WG", 64)]);
    // A key without the constant keeps the default.
    let key = PipelineKey::new(&K, "f", vec![("WG", 64)]);
    assert!(key.source().contains("const RS: u32 = 4u; // @key"));
}

#[test]
fn naga_source_comments_out_pending_directives_line_for_line() {
    let spec = "enable f16;\nenable subgroups;\n// enable subgroups; stays a comment\nfn f() {}";
    let naga = naga_source(spec);
    assert_eq!(
        naga,
        "enable f16;\n// enable subgroups;\n// enable subgroups; stays a comment\nfn f() {}"
    );
    assert_eq!(naga.lines().count(), spec.lines().count());
    // Text without them is handed over as it stands, not copied.
    let plain = "enable f16;\nfn f() {}";
    assert!(matches!(naga_source(plain), std::borrow::Cow::Borrowed(p) if p == plain));
}

/// Whether naga validates `module` with every capability but `without`.
fn validates_without(module: &naga::Module, without: naga::valid::Capabilities) -> bool {
    let mut v = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all() - without,
    );
    if !without.contains(naga::valid::Capabilities::SUBGROUP) {
        v.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
        v.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    v.validate(module).is_ok()
}

/// Every module declares exactly the `enable` directives its code needs (Tint rejects a
/// subgroup builtin or an f16 type without one), found by what naga's validator needs; naga
/// still rejects `enable subgroups;` (when it takes it, [`NAGA_PENDING_DIRECTIVES`] can go).
#[test]
fn every_module_enables_what_it_uses() {
    use naga::valid::Capabilities as C;
    let mut subgroup_modules = 0;
    let mut f16_in_f32_modules = 0;
    for shader in Shader::ALL {
        let spec = shader.source();
        let module = naga::front::wgsl::parse_str(&naga_source(&spec))
            .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&spec)));
        assert!(validates_without(&module, C::empty()), "{}", shader.name);
        let needs_subgroups = !validates_without(&module, C::SUBGROUP | C::SUBGROUP_BARRIER);
        let needs_f16 = !validates_without(&module, C::SHADER_FLOAT16);
        let enables = |d: &str| spec.lines().any(|l| l.trim() == d);
        assert_eq!(
            (enables("enable subgroups;"), enables("enable f16;")),
            (needs_subgroups, needs_f16),
            "{}: (enable subgroups, enable f16) vs what its code uses",
            shader.name
        );
        // `pack2x16float` needs no directive, but a device capability: exactly the listed
        // modules may use it, as only their ops check for it.
        let needs_f16_in_f32 = !validates_without(&module, C::SHADER_FLOAT16_IN_FLOAT32);
        assert_eq!(
            needs_f16_in_f32,
            F16_IN_F32.contains(shader),
            "{}: uses pack2x16float / unpack2x16float vs pipeline::F16_IN_F32",
            shader.name
        );
        f16_in_f32_modules += needs_f16_in_f32 as usize;
        if needs_subgroups {
            subgroup_modules += 1;
            assert!(
                naga::front::wgsl::parse_str(&spec).is_err(),
                "{}: naga now takes `enable subgroups;`",
                shader.name
            );
        }
    }
    assert_eq!(subgroup_modules, 7);
    assert_eq!(f16_in_f32_modules, F16_IN_F32.len());
}

#[test]
fn a_naga_error_names_the_file_and_line() {
    static BROKEN: Shader = Shader {
        name: "broken.wgsl",
        parts: &[
            COMMON_WGSL,
            "fn f() -> u32 {\n    return 1u;\n}\nfn g() -> u32 {\n    return undefined_name;\n}",
        ],
        variants: Vec::new,
    };
    let err = reflect(&BROKEN.source(), "main").expect_err("an unknown identifier");
    let (file, line) = BROKEN.locate(err.line.expect("naga names the line"));
    assert_eq!((file.as_str(), line), ("broken.wgsl part 2", 5), "{err}");
    let common_lines = COMMON_WGSL.matches('\n').count() + 1;
    assert_eq!(
        BROKEN.locate(common_lines),
        ("shaders/common.wgsl".into(), common_lines)
    );
}
