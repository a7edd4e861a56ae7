using System.Globalization;
using System.Runtime.InteropServices;
using Google.Protobuf;
using Microsoft.ML.Lora.Models.Onnx.Proto;

namespace Microsoft.ML.Lora.Models.Onnx;

/// <summary>Collects the nodes, initialisers, inputs and outputs of one ONNX graph (default domain, one opset).</summary>
internal sealed class OnnxGraphBuilder
{
    private readonly GraphProto graph = new() { Name = "graph" };
    private int counter;

    /// <summary>The graph built so far.</summary>
    public GraphProto Graph => graph;

    /// <summary>Adds a float32 initialiser (raw little-endian data) and returns its name.</summary>
    public string Float(string name, ReadOnlySpan<float> values, params long[] dims)
    {
        var tensor = new TensorProto { Name = name, DataType = OnnxTensor.Float, RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values)) };
        tensor.Dims.AddRange(dims);
        graph.Initializer.Add(tensor);
        return name;
    }

    /// <summary>Adds a float32 scalar constant and returns its name.</summary>
    public string Scalar(float value) => Float(Fresh("const"), [value]);

    /// <summary>Adds an int64 initialiser and returns its name (a scalar when <paramref name="dims"/> is empty).</summary>
    public string Int64(long[] values, params long[] dims)
    {
        var tensor = new TensorProto { Name = Fresh("const"), DataType = OnnxTensor.Int64 };
        tensor.Int64Data.AddRange(values);
        tensor.Dims.AddRange(dims);
        graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>A 1-D int64 constant.</summary>
    public string Int64s(params long[] values) => Int64(values, values.Length);

    /// <summary>Adds a node with one output and returns the output's name.</summary>
    public string Node(string op, string[] inputs, params AttributeProto[] attributes)
    {
        string output = Fresh(op);
        var node = new NodeProto { OpType = op, Name = output };
        node.Input.AddRange(inputs);
        node.Output.Add(output);
        node.Attribute.AddRange(attributes);
        graph.Node.Add(node);
        return output;
    }

    /// <summary>Renames a node output (the last node writing <paramref name="value"/>) to <paramref name="name"/>.</summary>
    public string Rename(string value, string name)
    {
        var node = graph.Node.Last(n => n.Output.Contains(value));
        node.Output[node.Output.IndexOf(value)] = name;
        foreach (var other in graph.Node)
        {
            for (int i = 0; i < other.Input.Count; i++)
            {
                if (other.Input[i] == value)
                {
                    other.Input[i] = name;
                }
            }
        }

        return name;
    }

    /// <summary>Declares a graph input or output tensor of the given element type; a string dimension is symbolic.</summary>
    public static ValueInfoProto Value(string name, int elementType, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var dim in dims)
        {
            shape.Dim.Add(dim is string symbol
                ? new TensorShapeProto.Types.Dimension { DimParam = symbol }
                : new TensorShapeProto.Types.Dimension { DimValue = Convert.ToInt64(dim, CultureInfo.InvariantCulture) });
        }

        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = elementType, Shape = shape } },
        };
    }

    public static AttributeProto Int(string name, long value) => new() { Name = name, I = value, Type = 2 };

    public static AttributeProto Real(string name, float value) => new() { Name = name, F = value, Type = 1 };

    public static AttributeProto Ints(string name, params long[] values)
    {
        var attribute = new AttributeProto { Name = name, Type = 7 };
        attribute.Ints.AddRange(values);
        return attribute;
    }

    private string Fresh(string prefix) => string.Create(CultureInfo.InvariantCulture, $"{prefix}_{counter++}");
}
