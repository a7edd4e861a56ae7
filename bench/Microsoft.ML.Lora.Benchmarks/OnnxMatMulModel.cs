using System.Runtime.InteropServices;
using System.Text;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// The bytes of a one-node ONNX model <c>Y = MatMul(A, B)</c> with A [M, K] an input and B [K, N] a constant
/// initialiser (as a linear layer's weight, which ONNX Runtime pre-packs for MLAS). Written with a minimal protobuf
/// encoder: the library's ONNX builder is internal to Microsoft.ML.Lora.Models.
/// </summary>
internal static class OnnxMatMulModel
{
    private const int FloatType = 1;

    public static byte[] Create(int m, int k, int n, float[] b)
    {
        if (b.Length != k * n) throw new ArgumentException($"b must hold K×N = {k * n} values, got {b.Length}.", nameof(b));
        var node = new Proto().Str(1, "A").Str(1, "B").Str(2, "Y").Str(3, "matmul").Str(4, "MatMul");
        var weight = new Proto().Int(1, k).Int(1, n).Int(2, FloatType).Str(8, "B").Bytes(9, MemoryMarshal.AsBytes(b.AsSpan()).ToArray());
        var graph = new Proto().Msg(1, node).Str(2, "matmul").Msg(5, weight).Msg(11, Value("A", m, k)).Msg(12, Value("Y", m, n));
        var opset = new Proto().Str(1, "").Int(2, 13);
        return new Proto().Int(1, 8).Msg(7, graph).Msg(8, opset).ToArray();
    }

    private static Proto Value(string name, params long[] dims)
    {
        var shape = new Proto();
        foreach (long d in dims) shape.Msg(1, new Proto().Int(1, d));
        var tensor = new Proto().Int(1, FloatType).Msg(2, shape);
        return new Proto().Str(1, name).Msg(2, new Proto().Msg(1, tensor));
    }

    /// <summary>Protobuf wire format: varint (type 0) and length-delimited (type 2) fields, enough for the model above.</summary>
    private sealed class Proto
    {
        private readonly List<byte> _s = new();

        public Proto Int(int field, long value)
        {
            Varint((ulong)(field << 3));
            Varint((ulong)value);
            return this;
        }

        public Proto Str(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

        public Proto Msg(int field, Proto message) => Bytes(field, message.ToArray());

        public Proto Bytes(int field, byte[] value)
        {
            Varint((ulong)((field << 3) | 2));
            Varint((ulong)value.Length);
            _s.AddRange(value);
            return this;
        }

        public byte[] ToArray() => _s.ToArray();

        private void Varint(ulong v)
        {
            while (v >= 0x80)
            {
                _s.Add((byte)(v | 0x80));
                v >>= 7;
            }
            _s.Add((byte)v);
        }
    }
}
