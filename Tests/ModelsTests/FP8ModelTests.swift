import Foundation
import Kernels
@testable import Models
import Testing

/// FP8 checkpoints (`quant_method: fp8`, e4m3 weights with `weight_scale_inv` per block): what stays FP8, what the
/// conversions make of it, and every way the scales or the config can be wrong. (The logits against the NumPy
/// reference run in `HuggingFaceParityTests` with the other fixtures.)
@Suite struct FP8ModelTests {
    static let fixture = "tiny-qwen3moe-fp8"

    func loadError(_ dir: String) -> String? {
        do {
            _ = try MoEDecoder.load(directory: dir)
            return nil
        } catch let e as ModelError {
            return e.description
        } catch {
            return "unexpected \(error)"
        }
    }

    /// The linear layers load as FP8 (1 byte a weight and a scale per 128), without widening the file; the
    /// embeddings, norms, routers and LM head keep the checkpoint's bf16.
    @Test func linearLayersStayFP8() throws {
        let model = try MoEDecoder.load(directory: Fixtures.path(Self.fixture))
        for layer in model.layers {
            let a = layer.attention
            #expect([a.q, a.k, a.v, a.o].allSatisfy { $0.type == .fp8 })
            switch layer.feedForward {
            case .dense(let f): #expect([f.gate, f.up, f.down].allSatisfy { $0.type == .fp8 })
            case .moe(let router, _, _): #expect(router.type == .bf16)
            }
        }
        #expect(model.embedding.type == .bf16 && model.lmHead.type == .bf16)
        let experts = model.bank.experts.joined().compactMap { $0 }
        #expect(!experts.isEmpty && experts.allSatisfy { [$0.gate, $0.up, $0.down].allSatisfy { $0.type == .fp8 } })
        // One byte a code and a 4-byte scale per 128 columns (short blocks padded): nothing widened.
        let matrices = experts.flatMap { [$0.gate, $0.up, $0.down] }
        #expect(matrices.allSatisfy { $0.byteCount == $0.rows * (($0.cols + 127) / 128) * 132 })
        #expect(model.weightBytes.experts == matrices.reduce(0) { $0 + $1.byteCount })
    }

    /// `--weights-dtype f32` widens the codes times their scales: the same logits within 1e-4 of the reference.
    /// `q8` requantizes the dequantized weights; `fp8` keeps the checkpoint's FP8 blocks as they are (requantizing
    /// would change them) and quantizes only what the checkpoint has in bf16 among the linear layers.
    @Test func conversionsOfAnFP8Checkpoint() throws {
        let expected = try Fixtures.expected(Self.fixture)
        let ids = expected.ints("b.input_ids"), want = expected.floats("b.logits")
        let widened = try MoEDecoder.load(directory: Fixtures.path(Self.fixture), options: LoadOptions(weights: .f32))
        #expect(widened.layers[0].attention.q.type == .f32)
        #expect(maxDifference(try runForward(widened, ids).logits, want) < 1e-4)
        let q8 = try MoEDecoder.load(directory: Fixtures.path(Self.fixture), options: LoadOptions(weights: .q8))
        #expect(q8.layers[0].attention.q.type == .q8)
        #expect(maxDifference(try runForward(q8, ids).logits, want) < 0.5)  // 0.24 measured
        // fp8 keeps the checkpoint's blocks byte for byte and quantizes the bf16 LM head (a linear layer).
        let stored = try MoEDecoder.load(directory: Fixtures.path(Self.fixture)).layers[0].attention.q
        let kept = try MoEDecoder.load(directory: Fixtures.path(Self.fixture), options: LoadOptions(weights: .fp8))
        let q = kept.layers[0].attention.q
        #expect(q.type == .fp8 && memcmp(q.base, stored.base, q.byteCount) == 0)
        #expect(kept.lmHead.type == .fp8)
        // e4m3 keeps 3 mantissa bits: the quantized LM head moves these logits (about ±5) by 0.17.
        #expect(maxDifference(try runForward(kept, ids).logits, want) < 0.3)
    }

    /// A copy of the fixture with `transform` applied to its tensors and `config` to its config.json.
    func broken(_ transform: @escaping ([String: TensorRef]) -> [(String, TensorRef)] = { $0.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } },
                config: ((inout [String: Any]) -> Void)? = nil) throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        try rewriteCheckpoint(from: Fixtures.path(Self.fixture), to: dir.path, transform: transform, config: config)
        return dir
    }

    static let q = "model.layers.0.self_attn.q_proj.weight"

    /// Each fault is one line naming the tensor, its file and what is wrong.
    @Test func badScalesAndConfigsAreOneClearLine() throws {
        let missing = try broken { $0.filter { $0.key != Self.q + "_scale_inv" }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
        #expect(loadError(missing.path) == "\(missing.file("model.safetensors")): FP8 tensor '\(Self.q)' has no scale tensor '\(Self.q)_scale_inv'")

        let reshaped = try broken { tensors in
            tensors.sorted { $0.key < $1.key }.map { name, t in
                guard name == Self.q + "_scale_inv" else { return (name, t) }
                return (name, TensorRef(name: t.name, dtype: t.dtype, shape: [4, 1], data: t.data, byteCount: t.byteCount, file: t.file, owner: t.owner))
            }
        }
        #expect(loadError(reshaped.path) == "\(reshaped.file("model.safetensors")): FP8 tensor '\(Self.q)' has scale tensor '\(Self.q)_scale_inv' of shape [4, 1], expected [2, 2] (blocks of 128 x 128)")

        let integer = try broken { tensors in
            tensors.sorted { $0.key < $1.key }.map { name, t in
                guard name == Self.q + "_scale_inv" else { return (name, t) }
                return (name, TensorRef(name: t.name, dtype: .I32, shape: t.shape, data: t.data, byteCount: t.byteCount, file: t.file, owner: t.owner))
            }
        }
        #expect(loadError(integer.path) == "\(integer.file("model.safetensors")): FP8 tensor '\(Self.q)' has scale tensor '\(Self.q)_scale_inv' of dtype I32; supported: F32, BF16, F16")

        let noConfig = try broken(config: { $0["quantization_config"] = nil })
        #expect(loadError(noConfig.path)?.hasSuffix("FP8 tensor '\(Self.q)' needs a quantization_config with quant_method 'fp8' in config.json") == true)

        let config = { (dir: TemporaryDirectory) in dir.file("config.json") }
        let awq = try broken(config: { $0["quantization_config"] = ["quant_method": "awq", "bits": 4] })
        #expect(loadError(awq.path) == "\(config(awq)): unsupported configuration: quantization_config: quant_method 'awq' is not supported (only 'fp8': e4m3 weights with block scales)")
        let e5m2 = try broken(config: { $0["quantization_config"] = ["quant_method": "fp8", "fmt": "e5m2"] })
        #expect(loadError(e5m2.path) == "\(config(e5m2)): unsupported configuration: quantization_config: fmt 'e5m2' is not supported (only 'e4m3')")
        let narrow = try broken(config: { $0["quantization_config"] = ["quant_method": "fp8", "weight_block_size": [128, 64]] })
        #expect(loadError(narrow.path) == "\(config(narrow)): unsupported configuration: quantization_config: weight_block_size [128, 64] is not supported (two sizes, the second a multiple of 128)")
    }

    /// NaN codes and negative or infinite scales are refused by name, with the element.
    @Test func nanCodesAndBadScaleValuesAreRefused() throws {
        let nan = try broken { tensors in
            tensors.sorted { $0.key < $1.key }.map { name, t in
                guard name == Self.q else { return (name, t) }
                let copy = ByteStorage(byteCount: t.byteCount)
                copy.pointer.copyMemory(from: t.data, byteCount: t.byteCount)
                copy.pointer.storeBytes(of: UInt8(0x7F), as: UInt8.self)  // code 0 of row 0 becomes NaN
                return (name, TensorRef(name: t.name, dtype: t.dtype, shape: t.shape, data: UnsafeRawPointer(copy.pointer),
                                        byteCount: t.byteCount, file: t.file, owner: copy))
            }
        }
        #expect(loadError(nan.path) == "\(nan.file("model.safetensors")): FP8 tensor '\(Self.q)' holds NaN at element 0")

        let negative = try broken { tensors in
            tensors.sorted { $0.key < $1.key }.map { name, t in
                guard name == Self.q + "_scale_inv" else { return (name, t) }
                let copy = ByteStorage(byteCount: t.byteCount)
                copy.pointer.copyMemory(from: t.data, byteCount: t.byteCount)
                copy.pointer.storeBytes(of: Float(-0.5), toByteOffset: 4, as: Float.self)
                return (name, TensorRef(name: t.name, dtype: t.dtype, shape: t.shape, data: UnsafeRawPointer(copy.pointer),
                                        byteCount: t.byteCount, file: t.file, owner: copy))
            }
        }
        #expect(loadError(negative.path) == "\(negative.file("model.safetensors")): FP8 tensor '\(Self.q)' has scale -0.5 at element 1 of '\(Self.q)_scale_inv'")
    }

    /// Fused expert tensors (transformers 5's `[E, rows, cols]`) in FP8: each kept expert packs its own codes with
    /// its own `[E, ⌈rows/br⌉, ⌈cols/bc⌉]` slice of the scales; an expert that `keep` refuses is not packed.
    @Test func fusedExpertsTakeTheirOwnScales() throws {
        let e = 3, rows = 5, cols = 130
        let codes = ByteStorage(byteCount: e * rows * cols), scales = FloatStorage((0..<(e * 2)).map { Float($0 + 1) / 4 })
        for i in 0..<(e * rows * cols) {
            var c = UInt8((i * 29 + 3) % 256)
            if FP8.isNaN(c) { c = 0x30 }
            codes.pointer.storeBytes(of: c, toByteOffset: i, as: UInt8.self)
        }
        let name = "model.layers.0.mlp.experts.down_proj"
        let store = WeightStore(tensors: [
            name: TensorRef(name: name, dtype: .F8_E4M3, shape: [e, rows, cols], data: UnsafeRawPointer(codes.pointer),
                            byteCount: e * rows * cols, file: "memory", owner: codes),
            name + "_scale_inv": TensorRef(name: name + "_scale_inv", dtype: .F32, shape: [e, 1, 2], data: UnsafeRawPointer(scales.pointer),
                                           byteCount: e * 2 * 4, file: "memory", owner: scales),
        ], origin: "memory")
        store.fp8Blocks = (128, 128)
        let experts = try store.matrices(name, count: e, rows: rows, cols: cols, keep: { $0 != 1 })
        #expect(experts[1] == nil)
        for x in [0, 2] {
            let m = try #require(experts[x])
            #expect(m.type == .fp8)
            let values = m.toFloatArray()
            for r in 0..<rows {
                for c in 0..<cols {
                    let code = codes.pointer.load(fromByteOffset: (x * rows + r) * cols + c, as: UInt8.self)
                    #expect(values[r * cols + c] == FP8.value(code) * scales.pointer[x * 2 + c / 128], "expert \(x) row \(r) column \(c)")
                }
            }
        }
    }
}
