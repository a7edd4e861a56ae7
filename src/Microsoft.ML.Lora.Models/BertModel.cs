using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// A BERT encoder (embeddings, <see cref="BertConfig.NumHiddenLayers"/> transformer layers, optional pooler) whose
/// sub-module and parameter names are those of Hugging Face's <c>BertModel</c>
/// (<c>embeddings.word_embeddings.weight</c>, <c>encoder.layer.0.attention.self.query.weight</c>, …), so
/// <c>state_dict()</c> keys equal checkpoint keys and PEFT target paths. Every linear layer (query, key, value and the
/// three <c>dense</c> layers of each encoder layer, and the pooler's dense) can be replaced by
/// <c>lora.inject_adapter_in_model</c>.
/// </summary>
public sealed class BertModel : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly BertEmbeddings embeddings;
    private readonly BertEncoder encoder;
    private readonly BertPooler? pooler;
    private readonly BertConfig config;

    /// <summary>Creates a BERT encoder with weights initialised as Hugging Face does (normal(0, initializer_range), zero biases, unit LayerNorm).</summary>
    /// <param name="config">The hyper-parameters; validated.</param>
    /// <param name="addPoolingLayer">Whether to add the pooler (dense + tanh over the [CLS] token), registered as <c>pooler</c>.</param>
    /// <exception cref="ArgumentException"><paramref name="config"/> is invalid (the message names the field).</exception>
    public BertModel(BertConfig config, bool addPoolingLayer = false) : this(config, addPoolingLayer, device: null)
    {
        InitializeWeights();
    }

    // Builds the module tree with its parameters on `device` (the meta device: shapes only, no memory) and leaves them
    // uninitialised; ShareWeights then points every parameter at another model's tensors.
    private BertModel(BertConfig config, bool addPoolingLayer, Device? device) : base(nameof(BertModel))
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        this.config = config.Clone();
        embeddings = new BertEmbeddings(this.config, device);
        encoder = new BertEncoder(this.config, device);
        pooler = addPoolingLayer ? new BertPooler(this.config, device) : null;
        RegisterComponents();
    }

    /// <summary>The configuration the model was built with (a new copy on each call; changing it does not affect the model).</summary>
    public BertConfig Config => config.Clone();

    /// <summary>
    /// Gradient (activation) checkpointing, as Hugging Face's <c>gradient_checkpointing_enable()</c>: while training with
    /// gradients on, each encoder layer keeps only its input and is run again during <c>backward()</c>
    /// (<c>lora.checkpoint</c>; dropout masks are replayed, so gradients are those of a plain backward). Saves most
    /// of the activation memory of training for about one extra encoder forward per step. Default false. Trainable
    /// parameters inside the layers (LoRA factors, or all weights in full fine-tuning) get their gradients as usual.
    /// The same setting as <see cref="Recomputation"/>: true is <see cref="Models.Recomputation.Full"/>, false is
    /// <see cref="Models.Recomputation.None"/> (reads false under <see cref="Models.Recomputation.Selective"/>).
    /// </summary>
    public bool GradientCheckpointing
    {
        get => encoder.Recomputation == Models.Recomputation.Full;
        set => encoder.Recomputation = value ? Models.Recomputation.Full : Models.Recomputation.None;
    }

    /// <summary>
    /// What training recomputes in the backward pass instead of keeping it (default
    /// <see cref="Models.Recomputation.None"/>): <see cref="Models.Recomputation.Selective"/> recomputes each layer's
    /// attention core (scores, softmax, dropout: the activations that grow with the square of the sequence length) and
    /// keeps dropout masks as bytes (hidden dropout, and LoRA dropout, whose dropped input is recomputed),
    /// <see cref="Models.Recomputation.Full"/> each whole layer (<see cref="GradientCheckpointing"/>). Loss and gradients
    /// are the same in every mode (dropout masks are replayed); eval mode and <c>no_grad</c> are not affected.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is not a defined <see cref="Models.Recomputation"/>.</exception>
    public Recomputation Recomputation
    {
        get => encoder.Recomputation;
        set => encoder.Recomputation = value;
    }

    /// <summary>
    /// Mixed precision as PyTorch's autocast does it: the linear layers (their weights and matrix products), the
    /// attention and the embedding tables go to <paramref name="matmulDtype"/> (bfloat16 or float16), while LayerNorm,
    /// the embedding sum and the residual stream between the layers stay float32, so the output is float32. Rounding
    /// the residual stream and LayerNorm's input to 8 significant bits, as a whole-model <c>to(bfloat16)</c> does, adds
    /// error at every layer that later layers amplify; autocast keeps them float32 for that reason. Call before LoRA
    /// injection: factors created on a half-precision weight are float32.
    /// </summary>
    /// <param name="matmulDtype">BFloat16, Float16 or Float32 (Float32 restores a plain float32 model).</param>
    /// <returns>This model.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="matmulDtype"/> is not a floating type named above.</exception>
    public BertModel ToMixedPrecision(ScalarType matmulDtype)
    {
        if (matmulDtype is not (ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float32))
        {
            throw new ArgumentOutOfRangeException(nameof(matmulDtype), matmulDtype, "Expected BFloat16, Float16 or Float32.");
        }

        this.to(matmulDtype);
        foreach (var (_, module) in named_modules())
        {
            if (module is TorchSharp.Modules.LayerNorm norm)
            {
                norm.to(ScalarType.Float32);
            }
        }

        return this;
    }

    /// <summary>The dtype of the linear layers' weights (the matmul dtype; float32 unless converted).</summary>
    public ScalarType MatmulDtype => encoder.MatmulDtype;

    /// <summary>The dtype of a linear module's <c>weight</c> (for a LoRA layer: its base weight).</summary>
    internal static ScalarType WeightDtype(nn.Module module) =>
        module.named_parameters().First(p => p.name == "weight").parameter.dtype;

    /// <summary>Whether the model has the pooler (<c>pooler.dense</c>).</summary>
    public bool HasPoolingLayer => pooler is not null;

    /// <summary>Runs the encoder.</summary>
    /// <param name="input_ids">Token ids [B, T], int64, each in [0, vocab_size).</param>
    /// <param name="attention_mask">[B, T], int64 (or any numeric type): 1 for real tokens, 0 for padding.</param>
    /// <param name="token_type_ids">[B, T], int64, each in [0, type_vocab_size).</param>
    /// <returns>
    /// The last hidden state [B, T, hidden_size], in the LayerNorm weights' dtype: float32, also under
    /// <see cref="ToMixedPrecision"/>.
    /// </returns>
    /// <exception cref="ArgumentException">The shapes differ, are not 2-D, or T exceeds max_position_embeddings.</exception>
    public override Tensor forward(Tensor input_ids, Tensor attention_mask, Tensor token_type_ids)
    {
        ArgumentNullException.ThrowIfNull(input_ids);
        ArgumentNullException.ThrowIfNull(attention_mask);
        ArgumentNullException.ThrowIfNull(token_type_ids);
        CheckInputs(input_ids, attention_mask, token_type_ids);

        using var scope = NewDisposeScope();
        var hidden = embeddings.forward(input_ids, token_type_ids);
        var additiveMask = ExtendedAttentionMask(attention_mask, encoder.MatmulDtype);
        return encoder.forward(hidden, additiveMask).MoveToOuterDisposeScope();
    }

    /// <summary>Applies the pooler (dense + tanh) to the [CLS] token of a last hidden state, as Hugging Face's <c>pooler_output</c>.</summary>
    /// <param name="lastHiddenState">[B, T, hidden_size] from <see cref="forward"/>.</param>
    /// <returns>[B, hidden_size].</returns>
    /// <exception cref="InvalidOperationException">The model was built without a pooling layer.</exception>
    public Tensor PoolerOutput(Tensor lastHiddenState)
    {
        ArgumentNullException.ThrowIfNull(lastHiddenState);
        if (pooler is null)
        {
            throw new InvalidOperationException("This BertModel has no pooling layer; create it with addPoolingLayer: true.");
        }

        return pooler.call(lastHiddenState);
    }

    /// <summary>
    /// Saves the model in Hugging Face layout: <c>config.json</c> and <c>model.safetensors</c> (float32, HF key names,
    /// no prefix) in <paramref name="directory"/>, each written to a temporary file and then moved into place.
    /// </summary>
    /// <param name="directory">Destination folder; created if missing; existing files of the same names are replaced.</param>
    public void SaveHuggingFace(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        Directory.CreateDirectory(directory);
        var tensors = BaseStateDict();
        SafeTensors.Write(
            Path.Combine(directory, HuggingFaceFolder.WeightsFileName), tensors, HuggingFaceFolder.SafetensorsMetadata, ScalarType.Float32);
        config.Save(Path.Combine(directory, HuggingFaceFolder.ConfigFileName));
    }

    /// <summary>
    /// The model's weights by Hugging Face key, without LoRA tensors (<c>lora_A</c>/<c>lora_B</c>) or modules
    /// that injection added; used for export and the weights fingerprint.
    /// </summary>
    internal SortedDictionary<string, Tensor> BaseStateDict()
    {
        var result = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, tensor) in state_dict())
        {
            if (!lora.IsLoraParameterName(name))
            {
                result[name] = tensor;
            }
        }

        return result;
    }

    /// <summary>
    /// A new module tree of the same shape whose parameters are frozen aliases of this model's tensors (same storage, no
    /// copy, <c>requires_grad</c> false), in evaluation mode. Several trees made this way share one copy of the weights;
    /// each can get its own LoRA adapters and head by injection, which replaces modules in that tree only. A change to
    /// the values of one tree's base weights (a merge) shows in all of them, so callers that merge give the layers they
    /// merge into private copies first. Call it on a model without LoRA layers.
    /// </summary>
    /// <returns>The new model (dispose it; the shared storage lives until its last alias is disposed).</returns>
    /// <exception cref="InvalidOperationException">This model has LoRA layers or a parameter kind the tree cannot alias.</exception>
    internal BertModel ShareWeights()
    {
        var source = named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        if (source.Keys.Any(lora.IsLoraParameterName))
        {
            throw new InvalidOperationException("ShareWeights needs a base model without LoRA layers.");
        }

        var shared = new BertModel(config, HasPoolingLayer, torch.META);
        try
        {
            using var noGrad = no_grad();
            Parameter Alias(string name) => new(source[name].detach(), requires_grad: false);
            foreach (var (path, module) in shared.named_modules())
            {
                string prefix = path.Length == 0 ? string.Empty : path + ".";
                switch (module)
                {
                    case TorchSharp.Modules.Linear linear:
                        linear.weight = Alias(prefix + "weight");
                        if (linear.bias is not null)
                        {
                            linear.bias = Alias(prefix + "bias");
                        }

                        break;
                    case TorchSharp.Modules.Embedding embedding:
                        embedding.weight = Alias(prefix + "weight");
                        break;
                    case FrozenEmbedding frozen:
                        frozen.weight = Alias(prefix + "weight");
                        break;
                    case TorchSharp.Modules.LayerNorm norm:
                        norm.weight = Alias(prefix + "weight");
                        norm.bias = Alias(prefix + "bias");
                        break;
                }
            }

            var left = shared.named_parameters().Where(p => p.parameter.device_type == DeviceType.META).Select(p => p.name).ToList();
            if (left.Count > 0 || shared.named_buffers().Any())
            {
                throw new InvalidOperationException($"ShareWeights cannot alias [{string.Join(", ", left)}].");
            }

            shared.Recomputation = Models.Recomputation.None;
            shared.eval();
            return shared;
        }
        catch
        {
            shared.Dispose();
            throw;
        }
    }

    private void CheckInputs(Tensor input_ids, Tensor attention_mask, Tensor token_type_ids)
    {
        if (input_ids.dim() != 2)
        {
            throw new ArgumentException($"input_ids must be 2-D [batch, sequence], but has shape {Shape(input_ids)}.", nameof(input_ids));
        }

        if (!attention_mask.shape.SequenceEqual(input_ids.shape))
        {
            throw new ArgumentException($"attention_mask has shape {Shape(attention_mask)}, expected the shape of input_ids {Shape(input_ids)}.", nameof(attention_mask));
        }

        if (!token_type_ids.shape.SequenceEqual(input_ids.shape))
        {
            throw new ArgumentException($"token_type_ids has shape {Shape(token_type_ids)}, expected the shape of input_ids {Shape(input_ids)}.", nameof(token_type_ids));
        }

        if (input_ids.shape[1] > config.MaxPositionEmbeddings)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture, $"input_ids has {input_ids.shape[1]} tokens per row, more than max_position_embeddings = {config.MaxPositionEmbeddings}."),
                nameof(input_ids));
        }
    }

    private static string Shape(Tensor t) => "[" + string.Join(", ", t.shape) + "]";

    private static Tensor ExtendedAttentionMask(Tensor attentionMask, ScalarType dtype)
    {
        // [B, T] -> [B, 1, 1, T]: 0 where attended, the most negative finite value where masked (as Hugging Face).
        // torch.finfo(dtype).min. bfloat16's is not float.MinValue: that rounds to −∞ in bfloat16, and −∞ in the scores
        // turns into NaN gradients.
        double min = dtype switch
        {
            ScalarType.Float64 => double.MinValue,
            ScalarType.Float16 => -65504.0,
            ScalarType.BFloat16 => -3.3895313892515355e38,
            _ => float.MinValue,
        };
        var keep = attentionMask.to_type(dtype).unsqueeze(1).unsqueeze(2);
        return keep.neg().add_(1.0).mul_(min);
    }

    private void InitializeWeights()
    {
        double std = config.InitializerRange;
        using var noGrad = no_grad();
        foreach (var (name, parameter) in named_parameters())
        {
            if (name.EndsWith("LayerNorm.weight", StringComparison.Ordinal))
            {
                parameter.fill_(1.0);
            }
            else if (name.EndsWith(".bias", StringComparison.Ordinal))
            {
                parameter.zero_();
            }
            else
            {
                parameter.normal_(0.0, std);
                if (name == "embeddings.word_embeddings.weight")
                {
                    parameter[config.PadTokenId].zero_();
                }
            }
        }
    }
}
