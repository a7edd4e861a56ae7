using System.Globalization;
using Google.Protobuf;
using Microsoft.ML.Lora.Models.Onnx.Proto;
using TorchSharp;
using static TorchSharp.torch;
using B = Microsoft.ML.Lora.Models.Onnx.OnnxGraphBuilder;

namespace Microsoft.ML.Lora.Models.Onnx;

/// <summary>
/// Writes a <see cref="BertForSequenceClassification"/> as one ONNX model (opset 17): embeddings, encoder, pooling, head
/// and an output transform, with inputs <c>input_ids</c>, <c>attention_mask</c>, <c>token_type_ids</c> (int64
/// [batch, sequence], both axes dynamic) and the output <see cref="ScoreOutput"/> (float32 [batch, outputs]).
/// </summary>
/// <remarks>
/// The graph is built from the TorchSharp model, so it is the same for a base loaded from a Hugging Face folder or
/// imported from ONNX. Each linear layer's effective weight is read by running the module on the identity (and its bias
/// on zeros): whatever the module is (a plain <c>Linear</c>, a LoRA layer merged or not, several adapters), the graph
/// holds W + ΔW of what it computes in eval mode. Embedding tables are read the same way (LoRA on embeddings included).
/// </remarks>
internal static class OnnxBertExporter
{
    /// <summary>The ONNX operator set the graph uses (LayerNormalization needs 17).</summary>
    public const int Opset = 17;

    /// <summary>Name of the graph's output.</summary>
    public const string ScoreOutput = "score";

    /// <summary>Graph input names.</summary>
    public const string InputIds = "input_ids";

    /// <summary>Graph input names.</summary>
    public const string AttentionMask = "attention_mask";

    /// <summary>Graph input names.</summary>
    public const string TokenTypeIds = "token_type_ids";

    /// <summary>What the graph applies to the head's outputs.</summary>
    internal enum OutputTransform
    {
        /// <summary>The head's outputs as they are (logits).</summary>
        None,

        /// <summary>Softmax over the outputs (class probabilities).</summary>
        Softmax,

        /// <summary><c>output · scale + shift</c> (a standardised regression value back in label units).</summary>
        Affine,
    }

    /// <summary>Writes the model in eval mode (dropout off; a model in training mode is switched to eval and back).</summary>
    /// <param name="model">The model; any device and dtype (weights are written as float32).</param>
    /// <param name="destination">Where the ONNX bytes go.</param>
    /// <param name="transform">The output transform.</param>
    /// <param name="scale">Scale of <see cref="OutputTransform.Affine"/>.</param>
    /// <param name="shift">Shift of <see cref="OutputTransform.Affine"/>.</param>
    /// <param name="metadata">Written as the model's metadata_props.</param>
    public static void Export(BertForSequenceClassification model, Stream destination, OutputTransform transform, float scale, float shift, IReadOnlyDictionary<string, string> metadata)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(metadata);
        bool wasTraining = model.training;
        if (wasTraining)
        {
            model.eval();
        }

        try
        {
            var graph = new Writer(model).Build(transform, scale, shift);
            var proto = new ModelProto
            {
                IrVersion = 8,
                ProducerName = "Microsoft.ML.Lora",
                ProducerVersion = typeof(OnnxBertExporter).Assembly.GetName().Version?.ToString() ?? "",
                DocString = "BERT sequence classifier exported by Microsoft.ML.Lora (LoRA merged into the weights).",
                Graph = graph,
            };
            proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
            foreach (var (key, value) in metadata)
            {
                proto.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
            }

            proto.WriteTo(destination);
        }
        finally
        {
            if (wasTraining)
            {
                model.train();
            }
        }
    }

    private sealed class Writer
    {
        private readonly BertForSequenceClassification model;
        private readonly BertConfig config;
        private readonly Dictionary<string, nn.Module> modules;
        private readonly Dictionary<string, Tensor> state;
        private readonly B b = new();

        public Writer(BertForSequenceClassification model)
        {
            this.model = model;
            config = model.Bert.Config;
            modules = model.named_modules().ToDictionary(m => m.name, m => m.module, StringComparer.Ordinal);
            state = model.state_dict().ToDictionary(p => p.Key, p => p.Value, StringComparer.Ordinal);
        }

        public GraphProto Build(OutputTransform transform, float scale, float shift)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            int hidden = config.HiddenSize;

            // Embeddings: word + token type + position (rows 0..T-1), then LayerNorm.
            string word = Table("bert.embeddings.word_embeddings", config.VocabSize);
            string types = Table("bert.embeddings.token_type_embeddings", config.TypeVocabSize);
            string positions = Table("bert.embeddings.position_embeddings", config.MaxPositionEmbeddings);
            string shape = b.Node("Shape", [InputIds]);
            string length = b.Node("Slice", [shape, b.Int64s(1), b.Int64s(2)]);
            string positionRows = b.Node("Slice", [positions, b.Int64s(0), length, b.Int64s(0)]);
            string sum = b.Node("Add", [b.Node("Add", [b.Node("Gather", [word, InputIds]), b.Node("Gather", [types, TokenTypeIds])]), positionRows]);
            string h = LayerNorm(sum, "bert.embeddings.LayerNorm");

            // Additive mask [B, 1, 1, T]: 0 where attended, float.MinValue where padded (as BertModel).
            string maskF = b.Node("Cast", [AttentionMask], B.Int("to", OnnxTensor.Float));
            string additive = b.Node("Mul", [b.Node("Sub", [b.Scalar(1f), maskF]), b.Scalar(float.MinValue)]);
            string mask4 = b.Node("Unsqueeze", [additive, b.Int64s(1, 2)]);

            for (int i = 0; i < config.NumHiddenLayers; i++)
            {
                h = Layer(h, mask4, string.Create(CultureInfo.InvariantCulture, $"bert.encoder.layer.{i}."));
            }

            string pooled;
            if (model.Pooling == PoolingMode.Mean)
            {
                string weights = b.Node("Unsqueeze", [maskF, b.Int64s(2)]);
                string total = b.Node("ReduceSum", [b.Node("Mul", [h, weights]), b.Int64s(1)], B.Int("keepdims", 0));
                string count = b.Node("Max", [b.Node("ReduceSum", [weights, b.Int64s(1)], B.Int("keepdims", 0)), b.Scalar(1e-9f)]);
                pooled = b.Node("Div", [total, count]);
            }
            else
            {
                pooled = b.Node("Gather", [h, b.Int64([0])], B.Int("axis", 1));
                if (model.Bert.HasPoolingLayer)
                {
                    pooled = b.Node("Tanh", [Linear(pooled, "bert.pooler.dense", hidden)]);
                }
            }

            string score = Linear(pooled, "classifier", hidden);
            score = transform switch
            {
                OutputTransform.Softmax => b.Node("Softmax", [score], B.Int("axis", -1)),
                OutputTransform.Affine => b.Node("Add", [b.Node("Mul", [score, b.Scalar(scale)]), b.Scalar(shift)]),
                _ => b.Node("Identity", [score]),
            };
            b.Rename(score, ScoreOutput);

            var graph = b.Graph;
            graph.Input.Add(B.Value(InputIds, OnnxTensor.Int64, "batch", "sequence"));
            graph.Input.Add(B.Value(AttentionMask, OnnxTensor.Int64, "batch", "sequence"));
            graph.Input.Add(B.Value(TokenTypeIds, OnnxTensor.Int64, "batch", "sequence"));
            graph.Output.Add(B.Value(ScoreOutput, OnnxTensor.Float, "batch", model.NumLabels));
            return graph;
        }

        private string Layer(string h, string mask4, string p)
        {
            int hidden = config.HiddenSize;
            long heads = config.NumAttentionHeads;
            long headSize = config.HeadSize;
            string split = b.Int64s(0, 0, heads, headSize);
            string Heads(string path, long[] perm) =>
                b.Node("Transpose", [b.Node("Reshape", [Linear(h, path, hidden), split])], B.Ints("perm", perm));

            string q = Heads(p + "attention.self.query", [0, 2, 1, 3]);
            string k = Heads(p + "attention.self.key", [0, 2, 3, 1]);
            string v = Heads(p + "attention.self.value", [0, 2, 1, 3]);
            string scores = b.Node("Add", [b.Node("Mul", [b.Node("MatMul", [q, k]), b.Scalar((float)(1.0 / Math.Sqrt(headSize)))]), mask4]);
            string probs = b.Node("Softmax", [scores], B.Int("axis", -1));
            string context = b.Node("Transpose", [b.Node("MatMul", [probs, v])], B.Ints("perm", 0, 2, 1, 3));
            context = b.Node("Reshape", [context, b.Int64s(0, 0, hidden)]);
            string attended = LayerNorm(b.Node("Add", [Linear(context, p + "attention.output.dense", hidden), h]), p + "attention.output.LayerNorm");
            string expanded = Activation(Linear(attended, p + "intermediate.dense", hidden));
            return LayerNorm(b.Node("Add", [Linear(expanded, p + "output.dense", config.IntermediateSize), attended]), p + "output.LayerNorm");
        }

        private string Activation(string x)
        {
            switch (config.HiddenAct)
            {
                case "gelu":
                {
                    string erf = b.Node("Erf", [b.Node("Mul", [x, b.Scalar((float)(1.0 / Math.Sqrt(2.0)))])]);
                    return b.Node("Mul", [b.Node("Mul", [x, b.Node("Add", [erf, b.Scalar(1f)])]), b.Scalar(0.5f)]);
                }

                case "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast":
                {
                    string cube = b.Node("Mul", [b.Node("Mul", [x, x]), x]);
                    string inner = b.Node("Add", [x, b.Node("Mul", [cube, b.Scalar(0.044715f)])]);
                    string tanh = b.Node("Tanh", [b.Node("Mul", [inner, b.Scalar((float)Math.Sqrt(2.0 / Math.PI))])]);
                    return b.Node("Mul", [b.Node("Mul", [x, b.Node("Add", [tanh, b.Scalar(1f)])]), b.Scalar(0.5f)]);
                }

                case "relu":
                    return b.Node("Relu", [x]);
                case "silu" or "swish":
                    return b.Node("Mul", [x, b.Node("Sigmoid", [x])]);
                default:
                    throw new InvalidOperationException($"hidden_act '{config.HiddenAct}' has no ONNX export.");
            }
        }

        private string LayerNorm(string x, string path) =>
            b.Node("LayerNormalization", [x, Parameter(path + ".weight"), Parameter(path + ".bias")],
                B.Int("axis", -1), B.Real("epsilon", (float)config.LayerNormEps));

        /// <summary>x · Wᵀ + b with the module's effective weight (LoRA included), read by probing it.</summary>
        private string Linear(string x, string path, int inFeatures)
        {
            var module = Module(path);
            var first = module.parameters().First();
            var zero = zeros(1, inFeatures, dtype: first.dtype, device: first.device);
            var bias = module.call(zero);
            var weightT = module.call(eye(inFeatures, dtype: first.dtype, device: first.device)).sub(bias);
            long outFeatures = bias.shape[1];
            string w = b.Float(path + ".weight_t", Values(weightT), inFeatures, outFeatures);
            string bb = b.Float(path + ".bias", Values(bias), outFeatures);
            return b.Node("Add", [b.Node("MatMul", [x, w]), bb]);
        }

        /// <summary>An embedding table as the module computes it for every id.</summary>
        private string Table(string path, int rows)
        {
            var module = Module(path);
            var device = module.parameters().First().device;
            var table = module.call(arange(rows, dtype: ScalarType.Int64, device: device));
            return b.Float(path + ".weight", Values(table), rows, table.shape[1]);
        }

        private string Parameter(string key)
        {
            if (!state.TryGetValue(key, out var tensor))
            {
                throw new InvalidOperationException($"The model has no parameter '{key}' to export.");
            }

            return b.Float(key, Values(tensor), tensor.shape);
        }

        private nn.Module<Tensor, Tensor> Module(string path) =>
            modules.TryGetValue(path, out var module) && module is nn.Module<Tensor, Tensor> typed
                ? typed
                : throw new InvalidOperationException($"The model has no module '{path}' with one tensor input to export.");

        private static float[] Values(Tensor tensor) =>
            tensor.detach().to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
    }
}
