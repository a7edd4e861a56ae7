using Google.Protobuf;
using Microsoft.ML.Lora.Models.Onnx.Proto;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Tests;

/// <summary>
/// Writes the weights of a tiny <see cref="BertModel"/> as an ONNX graph laid out like PyTorch's BERT export:
/// embeddings, LayerNorms and biases as named initialisers; linear weights as unnamed, transposed initialisers feeding
/// MatMul → Add(named bias); the head split as Reshape(Concat(…, heads, head size)); LayerNorm as
/// Sqrt(ReduceMean + eps); the activation ops; the pooler as Gemm(transB = 1). The graph is for the importer (it is
/// not meant to be run).
/// </summary>
internal sealed class TinyOnnxExport
{
    public bool Float16 { get; init; }
    public bool TypedFields { get; init; }
    public bool HeadsInGraph { get; init; } = true;
    public bool ConstantShapeTensor { get; init; }
    public string Prefix { get; init; } = "";
    public HashSet<string> UnnamedBiases { get; init; } = [];
    public string? ExternalWordEmbeddings { get; init; }

    private readonly GraphProto graph = new();
    private int counter;

    public byte[] Build(BertModel model, string directory)
    {
        var sd = model.state_dict();
        var c = model.Config;
        string Name() => (1000 + counter++).ToString(System.Globalization.CultureInfo.InvariantCulture);

        foreach (var (key, t) in sd)
        {
            if (!key.EndsWith(".weight", StringComparison.Ordinal) || key.Contains("embeddings", StringComparison.Ordinal) || key.Contains("LayerNorm", StringComparison.Ordinal))
            {
                string name = UnnamedBiases.Contains(key) ? "unnamed_" + key.GetHashCode(StringComparison.Ordinal) : Prefix + key;
                var proto = Tensor(name, t);
                if (ExternalWordEmbeddings is not null && key == "embeddings.word_embeddings.weight")
                {
                    // 16 bytes of junk first, so the offset is exercised.
                    byte[] data = [.. new byte[16], .. proto.RawData.ToByteArray()];
                    File.WriteAllBytes(Path.Combine(directory, ExternalWordEmbeddings), data);
                    proto.RawData = ByteString.Empty;
                    proto.DataLocation = 1;
                    proto.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = ExternalWordEmbeddings });
                    proto.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = "16" });
                    proto.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = (data.Length - 16).ToString(System.Globalization.CultureInfo.InvariantCulture) });
                }

                graph.Initializer.Add(proto);
            }
        }

        string x = "embeddings_out";
        AddLayerNorm(x, c.LayerNormEps, Name);
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"encoder.layer.{i}.";
            string q = Linear(x, sd, p + "attention.self.query", Name);
            string k = Linear(x, sd, p + "attention.self.key", Name);
            string v = Linear(x, sd, p + "attention.self.value", Name);
            foreach (string projected in new[] { q, k, v })
            {
                string shape = Name();
                if (ConstantShapeTensor)
                {
                    graph.Initializer.Add(Ints(shape, HeadsInGraph ? [0, 0, c.NumAttentionHeads, c.HeadSize] : [0, 0, -1, -1]));
                }
                else
                {
                    string heads = Name(), size = Name();
                    graph.Initializer.Add(Ints(heads, [HeadsInGraph ? c.NumAttentionHeads : -1]));
                    graph.Initializer.Add(Ints(size, [HeadsInGraph ? c.HeadSize : -1]));
                    graph.Node.Add(Node("Concat", ["batch_dim", "seq_dim", heads, size], [shape]));
                }

                graph.Node.Add(Node("Reshape", [projected, shape], [Name()]));
            }

            string attention = Linear("context", sd, p + "attention.output.dense", Name);
            AddLayerNorm(attention, c.LayerNormEps, Name);
            string inter = Linear(attention, sd, p + "intermediate.dense", Name);
            string activated = Activation(inter, c.HiddenAct, Name);
            Linear(activated, sd, p + "output.dense", Name);
        }

        if (model.HasPoolingLayer)
        {
            var gemm = Node("Gemm", ["cls_token", Prefix + "pooler.dense.weight", Prefix + "pooler.dense.bias"], ["pooled"]);
            gemm.Attribute.Add(new AttributeProto { Name = "transB", I = 1, Type = 2 });
            graph.Node.Add(gemm);
            graph.Initializer.Add(Tensor(Prefix + "pooler.dense.weight", sd["pooler.dense.weight"]));
        }

        return new ModelProto { IrVersion = 7, ProducerName = "test", Graph = graph }.ToByteArray();
    }

    private string Linear(string input, Dictionary<string, Tensor> sd, string module, Func<string> name)
    {
        string w = name();
        using var transposed = sd[module + ".weight"].t().contiguous();
        graph.Initializer.Add(Tensor(w, transposed));
        string product = name(), sum = name();
        graph.Node.Add(Node("MatMul", [input, w], [product]));
        string bias = UnnamedBiases.Contains(module + ".bias") ? "unnamed_" + (module + ".bias").GetHashCode(StringComparison.Ordinal) : Prefix + module + ".bias";
        graph.Node.Add(Node("Add", [bias, product], [sum]));
        return sum;
    }

    private void AddLayerNorm(string input, double eps, Func<string> name)
    {
        string mean = name(), variance = name(), epsName = name(), sum = name();
        graph.Node.Add(Node("ReduceMean", [input], [mean]));
        graph.Node.Add(Node("ReduceMean", [mean], [variance]));
        var constant = Node("Constant", [], [epsName]);
        constant.Attribute.Add(new AttributeProto { Name = "value", Type = 4, T = new TensorProto { DataType = 1, RawData = ByteString.CopyFrom(BitConverter.GetBytes((float)eps)) } });
        graph.Node.Add(constant);
        graph.Node.Add(Node("Add", [variance, epsName], [sum]));
        graph.Node.Add(Node("Sqrt", [sum], [name()]));
    }

    private string Activation(string input, string act, Func<string> name)
    {
        string output = name();
        switch (act)
        {
            case "gelu":
                string scaled = name(), erf = name();
                graph.Node.Add(Node("Div", [input, "sqrt2"], [scaled]));
                graph.Node.Add(Node("Erf", [scaled], [erf]));
                graph.Node.Add(Node("Mul", [input, erf], [output]));
                break;
            case "gelu_new":
                string cube = name(), tanh = name();
                graph.Node.Add(Node("Pow", [input, "three"], [cube]));
                graph.Node.Add(Node("Tanh", [cube], [tanh]));
                graph.Node.Add(Node("Mul", [input, tanh], [output]));
                break;
            default:
                graph.Node.Add(Node("Relu", [input], [output]));
                break;
        }

        return output;
    }

    private static NodeProto Node(string op, string[] inputs, string[] outputs)
    {
        var node = new NodeProto { OpType = op, Name = op + "_" + outputs[0] };
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs);
        return node;
    }

    private static TensorProto Ints(string name, long[] values)
    {
        var t = new TensorProto { Name = name, DataType = 7 };
        t.Dims.Add(values.Length);
        t.Int64Data.AddRange(values);
        return t;
    }

    private TensorProto Tensor(string name, Tensor value)
    {
        var t = new TensorProto { Name = name, DataType = Float16 ? 10 : 1 };
        t.Dims.AddRange(value.shape);
        float[] data = TestData.ToArray(value);
        if (Float16)
        {
            var bits = data.Select(f => BitConverter.HalfToUInt16Bits((Half)f)).ToArray();
            if (TypedFields)
            {
                t.Int32Data.AddRange(bits.Select(b => (int)b));
            }
            else
            {
                t.RawData = ByteString.CopyFrom(bits.SelectMany(BitConverter.GetBytes).ToArray());
            }
        }
        else if (TypedFields)
        {
            t.FloatData.AddRange(data);
        }
        else
        {
            t.RawData = ByteString.CopyFrom(data.SelectMany(BitConverter.GetBytes).ToArray());
        }

        return t;
    }
}
