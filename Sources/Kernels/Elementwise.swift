/// Row-wise normalisation, activations and vector math, written over SIMD16 so they vectorise.
public enum Elementwise {
    /// Hugging Face RMSNorm: `y = w * (x * rsqrt(mean(x²) + eps))` per row, in f32. x, y `[rows, n]`; y may be x.
    public static func rmsNorm(
        _ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, eps: Float,
        rows: Int, n: Int, into y: UnsafeMutablePointer<Float>
    ) {
        for r in 0..<rows {
            let xr = x + r * n, yr = y + r * n
            let ss = sumOfSquares(xr, n)
            let scale = 1 / (ss / Float(n) + eps).squareRoot()
            var i = 0
            while i + 16 <= n {
                let v = load(xr + i) * scale * load(weight + i)
                store(v, yr + i)
                i += 16
            }
            while i < n { yr[i] = (xr[i] * scale) * weight[i]; i += 1 }
        }
    }

    /// Σ x² over `n` floats.
    @inlinable
    public static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD16<Float>()
        var i = 0
        while i + 16 <= n { let v = load(x + i); acc.addProduct(v, v); i += 16 }
        var s = acc.sum()
        while i < n { s += x[i] * x[i]; i += 1 }
        return s
    }

    /// Σ a·b over `n` floats.
    @inlinable
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD16<Float>()
        var i = 0
        while i + 16 <= n { acc.addProduct(load(a + i), load(b + i)); i += 16 }
        var s = acc.sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// `y += a * x` over `n` floats.
    @inlinable
    public static func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        while i + 16 <= n {
            var v = load(y + i)
            v.addProduct(SIMD16(repeating: a), load(x + i))
            store(v, y + i)
            i += 16
        }
        while i < n { y[i] += a * x[i]; i += 1 }
    }

    /// `y += x` over `n` floats.
    @inlinable
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        while i + 16 <= n { store(load(y + i) + load(x + i), y + i); i += 16 }
        while i < n { y[i] += x[i]; i += 1 }
    }

    /// SiLU-GLU in place over `[rows, 2·n]` holding `gate | up` per row: the first `n` floats of each row
    /// become `silu(gate) * up`.
    public static func siluGLU(_ gu: UnsafeMutablePointer<Float>, rows: Int, n: Int) {
        siluGLU(gu, rows: rows, n: n, columns: 0..<n)
    }

    /// The same over `columns` of the gate half alone. A range whose bounds are multiples of 16 (or `n`) gives each
    /// of its columns the value the whole row gives it: the same columns take the SIMD path and the scalar one.
    public static func siluGLU(_ gu: UnsafeMutablePointer<Float>, rows: Int, n: Int, columns: Range<Int>) {
        for r in 0..<rows {
            let g = gu + r * 2 * n, u = g + n
            var i = columns.lowerBound
            while i + 16 <= columns.upperBound {
                let x = load(g + i)
                let s = x / (SIMD16<Float>(repeating: 1) + VectorMath.exp(-x))
                store(s * load(u + i), g + i)
                i += 16
            }
            while i < columns.upperBound { let x = g[i]; g[i] = x / (1 + VectorMath.exp(-x)) * u[i]; i += 1 }
        }
    }

    /// Logistic sigmoid of one value, as PyTorch computes it.
    @inlinable
    public static func sigmoid(_ x: Float) -> Float { 1 / (1 + VectorMath.exp(-x)) }

    @inlinable @inline(__always)
    public static func load(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
    }

    @inlinable @inline(__always)
    public static func load(_ p: UnsafeMutablePointer<Float>) -> SIMD16<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
    }

    @inlinable @inline(__always)
    public static func store(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
    }
}
