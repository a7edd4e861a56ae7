using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.ML.Lora.Models.Onnx.Proto;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Onnx;

/// <summary>
/// Reads the weights and sizes of a BERT encoder from an ONNX export. Embedding, LayerNorm and bias initialisers keep
/// their Hugging Face names; linear weights are found through the graph: an initialiser W feeding a MatMul whose
/// output goes into an Add with a named <c>&lt;module&gt;.bias</c> is <c>&lt;module&gt;.weight</c> = Wᵀ (a Gemm with that
/// bias as third input gives W, or Wᵀ when transB = 0). Sizes come from the tensors; the head count from the
/// Reshape that splits the query/key/value into heads, the activation from the ops after the intermediate dense,
/// and the LayerNorm epsilon from the graph.
/// </summary>
internal static partial class OnnxBertImporter
{
    internal sealed record Result(BertConfig Config, Dictionary<string, Tensor> Weights, bool HeadsFromGraph);

    public static Result Import(Stream onnx, string source, string? baseDirectory, int? numAttentionHeads)
    {
        var model = OnnxGraph.ParseModel(onnx, source);

        if (model.Graph is null || model.Graph.Initializer.Count == 0)
        {
            throw new InvalidDataException($"{source} has no graph initialisers; an ONNX export of a BERT model with its weights is expected.");
        }

        return new Importer(model.Graph, source, baseDirectory).Run(numAttentionHeads);
    }

    [GeneratedRegex(@"^(embeddings\.|encoder\.layer\.\d+\.|pooler\.)[A-Za-z_\.0-9]+\.(weight|bias)$")]
    private static partial Regex BertKey();

    [GeneratedRegex(@"^encoder\.layer\.(\d+)\.")]
    private static partial Regex LayerIndex();

    private sealed class Importer
    {
        private readonly GraphProto graph;
        private readonly string source;
        private readonly string? baseDirectory;
        private readonly Dictionary<string, TensorProto> initializers;
        private readonly Dictionary<string, NodeProto> producers;
        private readonly IReadOnlyDictionary<string, List<NodeProto>> consumers;

        public Importer(GraphProto graph, string source, string? baseDirectory)
        {
            this.graph = graph;
            this.source = source;
            this.baseDirectory = baseDirectory;
            var index = OnnxGraph.Index(graph, source);
            initializers = index.Initializers;
            producers = index.Producers;
            consumers = index.Consumers;
        }

        public Result Run(int? numAttentionHeads)
        {
            // 1. Named weights (embeddings, LayerNorms, biases, and any weight that kept its name).
            var named = new Dictionary<string, TensorProto>(StringComparer.Ordinal);
            foreach (var (name, t) in initializers)
            {
                string key = Normalize(name);
                if (OnnxTensor.IsFloatingPoint(t) && BertKey().IsMatch(key))
                {
                    named[key] = t;
                }
            }

            var weights = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            try
            {
                // 2. Linear weights through the graph (these override a same-named initialiser: layout comes from the op).
                var linear = MapLinearWeights(named);
                foreach (var (key, t) in named)
                {
                    if (!linear.ContainsKey(key))
                    {
                        weights[key] = ToTensor(t, transpose: false);
                    }
                }

                foreach (var (key, (t, transpose)) in linear)
                {
                    weights[key] = ToTensor(t, transpose);
                }

                var (config, headsFromGraph) = InferConfig(weights, numAttentionHeads);
                return new Result(config, weights, headsFromGraph);
            }
            catch
            {
                foreach (var t in weights.Values)
                {
                    t.Dispose();
                }

                throw;
            }
        }

        private static string Normalize(string name) => name.StartsWith("bert.", StringComparison.Ordinal) ? name["bert.".Length..] : name;

        private Dictionary<string, (TensorProto Tensor, bool Transpose)> MapLinearWeights(Dictionary<string, TensorProto> named)
        {
            var result = new Dictionary<string, (TensorProto, bool)>(StringComparer.Ordinal);
            foreach (var node in graph.Node)
            {
                if ((node.OpType != "MatMul" && node.OpType != "Gemm") || node.Input.Count < 2)
                {
                    continue;
                }

                if (!initializers.TryGetValue(node.Input[1], out var w) || w.Dims.Count != 2 || !OnnxTensor.IsFloatingPoint(w))
                {
                    continue;
                }

                string? biasKey = null;
                bool transpose = true;
                if (node.OpType == "Gemm")
                {
                    long transB = node.Attribute.FirstOrDefault(a => a.Name == "transB")?.I ?? 0;
                    transpose = transB == 0;
                    if (node.Input.Count > 2 && IsNamedBias(node.Input[2], named))
                    {
                        biasKey = Normalize(node.Input[2]);
                    }
                }
                else if (consumers.TryGetValue(node.Output[0], out var next))
                {
                    foreach (var add in next.Where(n => n.OpType == "Add"))
                    {
                        string? other = add.Input.FirstOrDefault(i => i != node.Output[0]);
                        if (other is not null && IsNamedBias(other, named))
                        {
                            biasKey = Normalize(other);
                            break;
                        }
                    }
                }

                if (biasKey is null)
                {
                    continue;
                }

                string weightKey = biasKey[..^"bias".Length] + "weight";
                long outFeatures = transpose ? w.Dims[1] : w.Dims[0];
                long biasLength = named[biasKey].Dims.LastOrDefault();
                if (outFeatures != biasLength)
                {
                    throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                        $"{source}: initialiser '{w.Name}' [{string.Join(", ", w.Dims)}] of {node.OpType} '{node.Name}' feeds '{biasKey}' of length {biasLength}; the shapes do not fit a linear layer."));
                }

                result[weightKey] = (w, transpose);
            }

            return result;
        }

        private static bool IsNamedBias(string name, Dictionary<string, TensorProto> named)
        {
            string key = Normalize(name);
            return key.EndsWith(".bias", StringComparison.Ordinal) && named.ContainsKey(key);
        }

        private Tensor ToTensor(TensorProto t, bool transpose)
        {
            float[] values = OnnxTensor.ToFloat32(t, baseDirectory);
            long[] dims = [.. t.Dims];
            using var raw = tensor(values, dims, ScalarType.Float32);
            return transpose ? raw.t().contiguous() : raw.clone();
        }

        private (BertConfig Config, bool HeadsFromGraph) InferConfig(Dictionary<string, Tensor> weights, int? numAttentionHeads)
        {
            Tensor Require(string key) => weights.TryGetValue(key, out var t)
                ? t
                : throw new InvalidDataException($"{source}: initialiser '{key}' was not found; is this an ONNX export of a BERT encoder?");

            var word = Require("embeddings.word_embeddings.weight");
            var position = Require("embeddings.position_embeddings.weight");
            var tokenType = Require("embeddings.token_type_embeddings.weight");
            var layers = weights.Keys.Select(k => LayerIndex().Match(k)).Where(m => m.Success)
                .Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).Distinct().Order().ToList();
            if (layers.Count == 0 || layers[0] != 0 || layers[^1] != layers.Count - 1)
            {
                throw new InvalidDataException($"{source}: encoder layers found: [{string.Join(", ", layers)}]; expected 0..N-1.");
            }

            var intermediate = Require("encoder.layer.0.intermediate.dense.bias");
            int hidden = (int)word.shape[1];
            int? graphHeads = InferHeads(hidden);
            int heads = numAttentionHeads ?? graphHeads ?? throw new InvalidDataException(
                $"{source}: the attention head count could not be read from the graph; pass numAttentionHeads.");
            if (numAttentionHeads is int given && (given <= 0 || hidden % given != 0))
            {
                throw new ArgumentOutOfRangeException(nameof(numAttentionHeads), given, string.Create(CultureInfo.InvariantCulture, $"must be a positive divisor of the hidden size {hidden}."));
            }

            var config = new BertConfig
            {
                VocabSize = (int)word.shape[0],
                HiddenSize = hidden,
                NumHiddenLayers = layers.Count,
                NumAttentionHeads = heads,
                IntermediateSize = (int)intermediate.shape[0],
                MaxPositionEmbeddings = (int)position.shape[0],
                TypeVocabSize = (int)tokenType.shape[0],
                HiddenAct = InferActivation(),
                LayerNormEps = InferEpsilon() ?? 1e-12,
            };
            config.Validate();
            return (config, numAttentionHeads is null);
        }

        /// <summary>Head count from the Reshape [batch, seq, heads, head_size] applied to the query/key/value of layer 0.</summary>
        private int? InferHeads(int hidden)
        {
            foreach (string module in new[] { "query", "key", "value" })
            {
                string? output = BiasAddOutput($"encoder.layer.0.attention.self.{module}.bias");
                if (output is null || !consumers.TryGetValue(output, out var next))
                {
                    continue;
                }

                foreach (var reshape in next.Where(n => n.OpType == "Reshape" && n.Input.Count > 1 && n.Input[0] == output))
                {
                    var shape = ResolveInts(reshape.Input[1], depth: 0);
                    if (shape is null || shape.Count != 4)
                    {
                        continue;
                    }

                    if (shape[2] is long h && h > 0 && hidden % h == 0 && (shape[3] is not long d0 || d0 <= 0 || h * d0 == hidden))
                    {
                        return (int)h;
                    }

                    if (shape[3] is long d && d > 0 && hidden % d == 0)
                    {
                        return (int)(hidden / d);
                    }
                }
            }

            return null;
        }

        /// <summary>Output of the node that adds <paramref name="biasName"/> (an Add, or a Gemm with it as bias).</summary>
        private string? BiasAddOutput(string biasName)
        {
            foreach (string name in new[] { biasName, "bert." + biasName })
            {
                if (consumers.TryGetValue(name, out var list))
                {
                    var node = list.FirstOrDefault(n => n.OpType is "Add" or "Gemm");
                    if (node is not null)
                    {
                        return node.Output[0];
                    }
                }
            }

            return null;
        }

        /// <summary>Integer values of a shape tensor where known (null entries are computed at run time).</summary>
        private List<long?>? ResolveInts(string name, int depth)
        {
            if (depth > 8)
            {
                return null;
            }

            if (initializers.TryGetValue(name, out var init))
            {
                return OnnxTensor.ToInt64(init, baseDirectory)?.Select(v => (long?)v).ToList();
            }

            if (!producers.TryGetValue(name, out var node))
            {
                return null;
            }

            switch (node.OpType)
            {
                case "Constant":
                    var value = node.Attribute.FirstOrDefault(a => a.Name == "value")?.T;
                    return value is null ? null : OnnxTensor.ToInt64(value, baseDirectory)?.Select(v => (long?)v).ToList();
                case "Concat":
                    var all = new List<long?>();
                    foreach (string input in node.Input)
                    {
                        all.AddRange(ResolveInts(input, depth + 1) ?? [null]);
                    }

                    return all;
                case "Cast" or "Identity":
                    return ResolveInts(node.Input[0], depth + 1);
                default:
                    return null;
            }
        }

        /// <summary>The feed-forward activation, from the ops between the intermediate dense and the output dense.</summary>
        private string InferActivation()
        {
            string? start = BiasAddOutput("encoder.layer.0.intermediate.dense.bias");
            if (start is null)
            {
                throw new InvalidDataException($"{source}: the intermediate dense of layer 0 was not found; cannot determine hidden_act.");
            }

            var seen = new HashSet<string>(StringComparer.Ordinal);
            var frontier = new Queue<(string Value, int Depth)>();
            frontier.Enqueue((start, 0));
            var ops = new List<NodeProto>();
            while (frontier.Count > 0)
            {
                var (value, depth) = frontier.Dequeue();
                if (depth > 8 || !consumers.TryGetValue(value, out var next))
                {
                    continue;
                }

                foreach (var node in next)
                {
                    if (node.OpType is "MatMul" or "Gemm" || !seen.Add(node.Name + "|" + node.Output.FirstOrDefault()))
                    {
                        continue;
                    }

                    ops.Add(node);
                    foreach (var output in node.Output)
                    {
                        frontier.Enqueue((output, depth + 1));
                    }
                }
            }

            var types = ops.Select(n => n.OpType).ToHashSet(StringComparer.Ordinal);
            if (types.Contains("Erf"))
            {
                return "gelu";
            }

            var gelu = ops.FirstOrDefault(n => n.OpType is "Gelu" or "FastGelu" or "BiasGelu");
            if (gelu is not null)
            {
                string approximate = gelu.Attribute.FirstOrDefault(a => a.Name == "approximate")?.S.ToStringUtf8() ?? "none";
                return gelu.OpType == "FastGelu" || approximate == "tanh" ? "gelu_new" : "gelu";
            }

            if (types.Contains("Tanh"))
            {
                return "gelu_new";
            }

            if (types.Contains("Relu"))
            {
                return "relu";
            }

            if (types.Contains("Sigmoid"))
            {
                return "silu";
            }

            throw new InvalidDataException($"{source}: the activation after the intermediate dense ({string.Join(", ", types.Order())}) is not one of gelu, gelu_new, relu, silu.");
        }

        /// <summary>Epsilon of a LayerNormalization op, or of the decomposed form sqrt(var + eps).</summary>
        private double? InferEpsilon()
        {
            foreach (var node in graph.Node)
            {
                if (node.OpType == "LayerNormalization")
                {
                    var attribute = node.Attribute.FirstOrDefault(a => a.Name == "epsilon");
                    return attribute is null ? 1e-5 : double.Parse(attribute.F.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
                }

                if (node.OpType == "Sqrt" && producers.TryGetValue(node.Input[0], out var add) && add.OpType == "Add")
                {
                    foreach (string input in add.Input)
                    {
                        TensorProto? constant = initializers.TryGetValue(input, out var init) ? init
                            : producers.TryGetValue(input, out var c) && c.OpType == "Constant" ? c.Attribute.FirstOrDefault(a => a.Name == "value")?.T
                            : null;
                        if (constant is not null && OnnxTensor.ToScalar(constant, baseDirectory) is double eps)
                        {
                            return eps;
                        }
                    }
                }
            }

            return null;
        }
    }
}
