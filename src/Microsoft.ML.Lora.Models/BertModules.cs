using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Microsoft.ML.Lora.Models;

// Building blocks of BertModel. Class, field and registered names mirror Hugging Face's modeling_bert.py so that
// state_dict() keys equal the checkpoint keys. Linear layers are declared as Module<Tensor, Tensor> fields named
// like the registered module so that lora.inject_adapter_in_model can swap them (registry and field).
//
// Mixed precision (BertModel.ToMixedPrecision), as PyTorch's CPU/CUDA autocast: the linear layers and the attention
// run in the dtype of the linear weights (the "matmul dtype", which is also the additive mask's dtype); the residual
// stream, the embedding sum and LayerNorm run in the LayerNorm weights' dtype (float32). Each block casts its input to
// the dtype of the next matmul and its matmul output back to the residual dtype. With all weights in one dtype every
// cast is a no-op.

internal sealed class BertEmbeddings : Module<Tensor, Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> word_embeddings;
    private readonly Module<Tensor, Tensor> position_embeddings;
    private readonly Module<Tensor, Tensor> token_type_embeddings;
    private readonly LayerNorm LayerNorm;
    private readonly Dropout dropout;

    public BertEmbeddings(BertConfig config, Device? device = null) : base("BertEmbeddings")
    {
        word_embeddings = NewEmbedding(config.VocabSize, config.HiddenSize, config.PadTokenId, device);
        position_embeddings = NewEmbedding(config.MaxPositionEmbeddings, config.HiddenSize, null, device);
        token_type_embeddings = NewEmbedding(config.TypeVocabSize, config.HiddenSize, null, device);
        LayerNorm = nn.LayerNorm(config.HiddenSize, eps: config.LayerNormEps, device: device);
        dropout = nn.Dropout(config.HiddenDropoutProb);
        RegisterComponents();
    }

    // TorchSharp's native nn.Embedding keeps a CPU weight of its full size even on the meta device (measured: +45 MiB of
    // RSS per MiniLM tree); a tree built to share another model's weights (meta device) gets frozen lookups instead.
    private static Module<Tensor, Tensor> NewEmbedding(long count, long dimension, long? paddingIndex, Device? device) =>
        device?.type == DeviceType.META
            ? new FrozenEmbedding(count, dimension)
            : nn.Embedding(count, dimension, padding_idx: paddingIndex, device: device);

    public override Tensor forward(Tensor inputIds, Tensor tokenTypeIds)
    {
        using var scope = NewDisposeScope();
        long length = inputIds.shape[1];
        using var positions = arange(length, dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0);
        // The sum runs in LayerNorm's dtype: float32 under mixed precision even when the tables are stored in bfloat16.
        var residualDtype = LayerNorm.weight!.dtype;
        var embeddings = word_embeddings.forward(inputIds).to(residualDtype)
            .add_(token_type_embeddings.forward(tokenTypeIds))
            .add_(position_embeddings.forward(positions));
        return dropout.forward(LayerNorm.forward(embeddings)).MoveToOuterDisposeScope();
    }
}

internal sealed class BertSelfAttention : Module<Tensor, Tensor, Tensor>
{
    private Module<Tensor, Tensor> query;
    private Module<Tensor, Tensor> key;
    private Module<Tensor, Tensor> value;
    private readonly int numHeads;
    private readonly int headSize;
    private readonly double attentionDropout;

    /// <summary>The dtype of the query projection's weight (the attention runs in it).</summary>
    public ScalarType MatmulDtype => BertModel.WeightDtype(query);

    /// <summary>
    /// Whether training with gradients on runs the attention core (scores, mask, softmax, dropout, product with V)
    /// through <c>lora.checkpoint</c>, so that its [B, heads, T, T] activations are recomputed in the backward pass
    /// instead of kept (<see cref="Recomputation.Selective"/>).
    /// </summary>
    public bool RecomputeCore { get; set; }

    public BertSelfAttention(BertConfig config, Device? device = null) : base("BertSelfAttention")
    {
        numHeads = config.NumAttentionHeads;
        headSize = config.HeadSize;
        attentionDropout = config.AttentionProbsDropoutProb;
        query = nn.Linear(config.HiddenSize, config.HiddenSize, device: device);
        key = nn.Linear(config.HiddenSize, config.HiddenSize, device: device);
        value = nn.Linear(config.HiddenSize, config.HiddenSize, device: device);
        RegisterComponents();
    }

    /// <param name="hidden">[B, T, H], in the residual dtype.</param>
    /// <param name="additiveMask">
    /// [B, 1, 1, T] in the matmul dtype, 0 for tokens to attend to and a large negative number for padding.
    /// </param>
    /// <returns>[B, T, H] in the matmul dtype (the input of the output projection).</returns>
    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        using var scope = NewDisposeScope();
        long batch = hidden.shape[0];
        long length = hidden.shape[1];
        var input = hidden.to(additiveMask.dtype);
        Tensor Heads(Module<Tensor, Tensor> projection) =>
            projection.call(input).reshape(batch, length, numHeads, headSize).transpose(1, 2);

        var q = Heads(query);
        var k = Heads(key);
        var v = Heads(value);
        double dropout = training ? attentionDropout : 0.0;
        // q, k, v and the mask are the checkpoint's inputs (kept for the recomputation); the random-number state is
        // replayed, so the attention dropout draws the same mask again. No parameters: the core has none.
        var context = RecomputeCore && training && is_grad_enabled()
            ? lora.CheckpointInputs(inputs => Core(inputs[0], inputs[1], inputs[2], inputs[3], dropout), [q, k, v, additiveMask], [])
            : Core(q, k, v, additiveMask, dropout);
        return context.transpose(1, 2).reshape(batch, length, numHeads * headSize).MoveToOuterDisposeScope();
    }

    private static Tensor Core(Tensor q, Tensor k, Tensor v, Tensor additiveMask, double dropout) =>
        nn.functional.scaled_dot_product_attention(q, k, v, additiveMask, dropout, false);
}

/// <summary>
/// dense → dropout → + residual → LayerNorm: Hugging Face's BertSelfOutput (input = hidden size) and BertOutput
/// (input = intermediate size) are this one block with different input widths.
/// </summary>
internal sealed class BertResidualOutput : Module<Tensor, Tensor, Tensor>
{
    private Module<Tensor, Tensor> dense;
    private readonly LayerNorm LayerNorm;
    private readonly Dropout dropout;
    private readonly double dropoutProbability;

    public BertResidualOutput(string name, int inputSize, BertConfig config, Device? device = null) : base(name)
    {
        dense = nn.Linear(inputSize, config.HiddenSize, device: device);
        LayerNorm = nn.LayerNorm(config.HiddenSize, eps: config.LayerNormEps, device: device);
        dropout = nn.Dropout(config.HiddenDropoutProb);
        dropoutProbability = config.HiddenDropoutProb;
        RegisterComponents();
    }

    /// <summary>
    /// Whether training with gradients keeps the dropout mask as one byte an element (<c>ByteMaskDropout</c>: same
    /// values and random draws) instead of libtorch's float scale tensor (<see cref="Recomputation.Selective"/>).
    /// </summary>
    public bool DropoutKeepsByteMask { get; set; }

    /// <param name="hidden">The block's input, in the matmul dtype.</param>
    /// <param name="residual">The residual stream, in the residual (LayerNorm) dtype.</param>
    public override Tensor forward(Tensor hidden, Tensor residual)
    {
        using var scope = NewDisposeScope();
        var projected = dense.call(hidden);
        var dropped = DropoutKeepsByteMask && training && is_grad_enabled()
            ? ByteMaskDropout.Dropout(projected, dropoutProbability)
            : dropout.forward(projected);
        return LayerNorm.forward(dropped.to(residual.dtype).add_(residual)).MoveToOuterDisposeScope();
    }
}

internal sealed class BertAttention : Module<Tensor, Tensor, Tensor>
{
    private readonly BertSelfAttention self;
    private readonly BertResidualOutput output;

    public ScalarType MatmulDtype => self.MatmulDtype;

    /// <summary>See <see cref="BertSelfAttention.RecomputeCore"/>.</summary>
    public bool RecomputeCore
    {
        get => self.RecomputeCore;
        set => self.RecomputeCore = value;
    }

    /// <summary>See <see cref="BertResidualOutput.DropoutKeepsByteMask"/>.</summary>
    public bool DropoutKeepsByteMask
    {
        get => output.DropoutKeepsByteMask;
        set => output.DropoutKeepsByteMask = value;
    }

    public BertAttention(BertConfig config, Device? device = null) : base("BertAttention")
    {
        self = new BertSelfAttention(config, device);
        output = new BertResidualOutput("BertSelfOutput", config.HiddenSize, config, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        using var context = self.forward(hidden, additiveMask);
        return output.forward(context, hidden);
    }
}

internal sealed class BertIntermediate : Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> dense;
    private readonly string activation;

    public BertIntermediate(BertConfig config, Device? device = null) : base("BertIntermediate")
    {
        dense = nn.Linear(config.HiddenSize, config.IntermediateSize, device: device);
        activation = config.HiddenAct;
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        using var projected = dense.call(hidden);
        return activation switch
        {
            "gelu" => nn.functional.gelu(projected),
            "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => nn.functional.gelu(projected, TorchSharp.Modules.GELU.Approximate.tanh),
            "relu" => nn.functional.relu(projected),
            "silu" or "swish" => nn.functional.silu(projected),
            _ => throw new InvalidOperationException($"Unsupported hidden_act '{activation}'."),
        };
    }
}

internal sealed class BertLayer : Module<Tensor, Tensor, Tensor>
{
    private readonly BertAttention attention;
    private readonly BertIntermediate intermediate;
    private readonly BertResidualOutput output;

    /// <summary>The dtype of the query projection's weight.</summary>
    public ScalarType MatmulDtype => attention.MatmulDtype;

    /// <summary>See <see cref="BertSelfAttention.RecomputeCore"/>.</summary>
    public bool RecomputeAttentionCore
    {
        get => attention.RecomputeCore;
        set => attention.RecomputeCore = value;
    }

    /// <summary>See <see cref="BertResidualOutput.DropoutKeepsByteMask"/> (both of the layer's residual blocks).</summary>
    public bool DropoutKeepsByteMask
    {
        get => output.DropoutKeepsByteMask;
        set
        {
            attention.DropoutKeepsByteMask = value;
            output.DropoutKeepsByteMask = value;
        }
    }

    public BertLayer(BertConfig config, Device? device = null) : base("BertLayer")
    {
        attention = new BertAttention(config, device);
        intermediate = new BertIntermediate(config, device);
        output = new BertResidualOutput("BertOutput", config.IntermediateSize, config, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        using var attended = attention.forward(hidden, additiveMask);
        using var lowered = attended.to(additiveMask.dtype);
        using var expanded = intermediate.forward(lowered);
        return output.forward(expanded, attended);
    }
}

internal sealed class BertEncoder : Module<Tensor, Tensor, Tensor>
{
    private readonly ModuleList<BertLayer> layer;

    public BertEncoder(BertConfig config, Device? device = null) : base("BertEncoder")
    {
        layer = new ModuleList<BertLayer>(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new BertLayer(config, device)).ToArray());
        RegisterComponents();
    }

    /// <summary>The dtype of the first layer's query weight: the matmul dtype of the encoder.</summary>
    public ScalarType MatmulDtype => layer.Count == 0 ? ScalarType.Float32 : layer[0].MatmulDtype;

    private Recomputation recomputation;

    /// <summary>
    /// What training recomputes (see <see cref="BertModel.Recomputation"/>): <see cref="Recomputation.Full"/> runs each
    /// layer through <c>lora.checkpoint</c>; <see cref="Recomputation.Selective"/> each layer's attention core, keeps
    /// the hidden-dropout masks as bytes, and has the LoRA linear layers inside the layers recompute their dropped inputs
    /// (<c>LoraLayer.RecomputeDroppedInput</c>, set at each training forward, so layers injected later are covered).
    /// </summary>
    public Recomputation Recomputation
    {
        get => recomputation;
        set
        {
            if (!Enum.IsDefined(value))
            {
                throw new ArgumentOutOfRangeException(nameof(value), value, "Expected Recomputation.None, Selective or Full.");
            }

            recomputation = value;
            foreach (var block in layer)
            {
                block.RecomputeAttentionCore = value == Recomputation.Selective;
                block.DropoutKeepsByteMask = value == Recomputation.Selective;
            }
        }
    }

    public override Tensor forward(Tensor hidden, Tensor additiveMask)
    {
        bool checkpointing = recomputation == Recomputation.Full && training && is_grad_enabled();
        bool selective = recomputation == Recomputation.Selective && training && is_grad_enabled();
        Tensor current = hidden;
        foreach (var block in layer)
        {
            if (training && is_grad_enabled())
            {
                foreach (var module in block.modules())
                {
                    if (module is Lora.Modules.LoraLayer loraLayer)
                    {
                        loraLayer.RecomputeDroppedInput = selective;
                    }
                }
            }

            var next = checkpointing
                ? lora.checkpoint(block.forward, current, additiveMask, block.parameters())
                : block.forward(current, additiveMask);
            if (!ReferenceEquals(current, hidden))
            {
                current.Dispose();
            }

            current = next;
        }

        return ReferenceEquals(current, hidden) ? hidden.alias() : current;
    }
}

internal sealed class BertPooler : Module<Tensor, Tensor>
{
    private Module<Tensor, Tensor> dense;

    public BertPooler(BertConfig config, Device? device = null) : base("BertPooler")
    {
        dense = nn.Linear(config.HiddenSize, config.HiddenSize, device: device);
        RegisterComponents();
    }

    /// <summary>The dtype of the dense layer's weight (its input is cast to it).</summary>
    public ScalarType WeightDtype => BertModel.WeightDtype(dense);

    /// <param name="hidden">Last hidden state [B, T, H]; the [CLS] (first) token is pooled.</param>
    public override Tensor forward(Tensor hidden)
    {
        using var first = hidden.select(1, 0).to(WeightDtype);
        using var projected = dense.call(first);
        return projected.tanh();
    }
}
