using Google.Protobuf;
using Microsoft.ML.Lora.Models.Onnx.Proto;

namespace Microsoft.ML.Lora.Models.Onnx;

/// <summary>
/// A parsed ONNX model with the lookups every importer walks: initialisers by name, the node producing each value and the
/// nodes consuming it. Shared by the BERT and ResNet importers.
/// </summary>
internal sealed class OnnxGraph
{
    private static readonly IReadOnlyList<NodeProto> None = [];
    private readonly Dictionary<string, List<NodeProto>> consumers = new(StringComparer.Ordinal);

    private OnnxGraph(GraphProto graph, string source)
    {
        Graph = graph;
        Source = source;
        foreach (var t in graph.Initializer)
        {
            Initializers[t.Name] = t;
        }

        foreach (var node in graph.Node)
        {
            foreach (var output in node.Output)
            {
                Producers[output] = node;
            }

            foreach (var input in node.Input)
            {
                if (!consumers.TryGetValue(input, out var list))
                {
                    consumers[input] = list = [];
                }

                list.Add(node);
            }
        }
    }

    /// <summary>The graph.</summary>
    public GraphProto Graph { get; }

    /// <summary>Where the model came from (for messages).</summary>
    public string Source { get; }

    /// <summary>Initialisers by name.</summary>
    public Dictionary<string, TensorProto> Initializers { get; } = new(StringComparer.Ordinal);

    /// <summary>The node that writes each value.</summary>
    public Dictionary<string, NodeProto> Producers { get; } = new(StringComparer.Ordinal);

    /// <summary>The nodes that read <paramref name="value"/> (empty when none).</summary>
    public IReadOnlyList<NodeProto> ConsumersOf(string value) => consumers.TryGetValue(value, out var list) ? list : None;

    /// <summary>The nodes that read each value.</summary>
    public IReadOnlyDictionary<string, List<NodeProto>> Consumers => consumers;

    /// <summary>Parses an ONNX model (only the schema subset this library reads; other fields are skipped).</summary>
    /// <exception cref="InvalidDataException">The stream is not an ONNX model.</exception>
    public static ModelProto ParseModel(Stream onnx, string source)
    {
        try
        {
            var input = new CodedInputStream(onnx, leaveOpen: true);
            return ModelProto.Parser.ParseFrom(input);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"{source} is not a valid ONNX model: {e.Message}", e);
        }
    }

    /// <summary>Parses an ONNX model and indexes its graph.</summary>
    /// <exception cref="InvalidDataException">The stream is not an ONNX model or has no graph.</exception>
    public static OnnxGraph Read(Stream onnx, string source)
    {
        var model = ParseModel(onnx, source);
        return model.Graph is null
            ? throw new InvalidDataException($"{source} has no graph.")
            : new OnnxGraph(model.Graph, source);
    }

    /// <summary>Wraps an already parsed graph.</summary>
    public static OnnxGraph Index(GraphProto graph, string source) => new(graph, source);

    /// <summary>The integer list attribute <paramref name="name"/> of <paramref name="node"/>, or null when absent.</summary>
    public static long[]? Ints(NodeProto node, string name) => node.Attribute.FirstOrDefault(a => a.Name == name)?.Ints.ToArray();

    /// <summary>The integer attribute <paramref name="name"/> of <paramref name="node"/>, or <paramref name="fallback"/>.</summary>
    public static long Int(NodeProto node, string name, long fallback) => node.Attribute.FirstOrDefault(a => a.Name == name)?.I ?? fallback;

    /// <summary>The float attribute <paramref name="name"/> of <paramref name="node"/>, or <paramref name="fallback"/>.</summary>
    public static float Float(NodeProto node, string name, float fallback) => node.Attribute.FirstOrDefault(a => a.Name == name)?.F ?? fallback;

    /// <summary>The string attribute <paramref name="name"/> of <paramref name="node"/>, or null.</summary>
    public static string? String(NodeProto node, string name) => node.Attribute.FirstOrDefault(a => a.Name == name)?.S.ToStringUtf8();
}
