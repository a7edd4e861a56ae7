using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// A BERT encoder with a classification (or regression, when <see cref="NumLabels"/> is 1) head:
/// pooling, dropout and a linear layer <c>classifier</c> (hidden_size → num_labels). Sub-modules are named
/// <c>bert</c>, <c>dropout</c> and <c>classifier</c> as in Hugging Face's <c>BertForSequenceClassification</c>,
/// so PEFT paths (<c>bert.encoder.layer.0.attention.self.query</c>) and <c>modules_to_save = ["classifier"]</c> apply.
/// </summary>
public sealed class BertForSequenceClassification : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly BertModel bert;
    private readonly Dropout dropout;
    private Module<Tensor, Tensor> classifier;

    /// <summary>Creates the head on top of <paramref name="bert"/> (which becomes a sub-module; it is not copied).</summary>
    /// <param name="bert">The encoder.</param>
    /// <param name="numLabels">Number of outputs: classes for classification, 1 for regression.</param>
    /// <param name="pooling">
    /// <see cref="PoolingMode.Mean"/> (default): mean over real tokens. <see cref="PoolingMode.Cls"/>: the pooler output
    /// when <paramref name="bert"/> has a pooling layer (as Hugging Face), otherwise the [CLS] state.
    /// </param>
    /// <param name="dropout">Dropout probability before the classifier, in [0, 1). Default 0.1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numLabels"/> &lt; 1 or <paramref name="dropout"/> outside [0, 1).</exception>
    public BertForSequenceClassification(BertModel bert, int numLabels, PoolingMode pooling = PoolingMode.Mean, double dropout = 0.1)
        : base(nameof(BertForSequenceClassification))
    {
        ArgumentNullException.ThrowIfNull(bert);
        ArgumentOutOfRangeException.ThrowIfLessThan(numLabels, 1);
        if (!(dropout >= 0 && dropout < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "dropout must be in [0, 1).");
        }

        if (!Enum.IsDefined(pooling))
        {
            throw new ArgumentOutOfRangeException(nameof(pooling), pooling, "pooling must be Cls or Mean.");
        }

        this.bert = bert;
        this.dropout = nn.Dropout(dropout);
        NumLabels = numLabels;
        Pooling = pooling;
        int hidden = bert.Config.HiddenSize;
        var head = nn.Linear(hidden, numLabels);
        using (no_grad())
        {
            head.weight!.normal_(0.0, bert.Config.InitializerRange);
            head.bias!.zero_();
        }

        classifier = head;
        RegisterComponents();
    }

    /// <summary>The encoder (registered as <c>bert</c>).</summary>
    public BertModel Bert => bert;

    /// <summary>Number of outputs; 1 means regression.</summary>
    public int NumLabels { get; }

    /// <summary>How the encoder output is pooled before the classifier.</summary>
    public PoolingMode Pooling { get; }

    /// <summary>Computes logits (or the regression value).</summary>
    /// <param name="input_ids">Token ids [B, T], int64.</param>
    /// <param name="attention_mask">[B, T], 1 for real tokens, 0 for padding.</param>
    /// <param name="token_type_ids">[B, T], int64.</param>
    /// <returns>[B, NumLabels], float32.</returns>
    public override Tensor forward(Tensor input_ids, Tensor attention_mask, Tensor token_type_ids)
    {
        using var scope = NewDisposeScope();
        var hidden = bert.call(input_ids, attention_mask, token_type_ids);
        var pooled = Pooling == PoolingMode.Cls && bert.HasPoolingLayer
            ? bert.PoolerOutput(hidden)
            : Models.Pooling.Pool(hidden, attention_mask, Pooling, normalize: false);
        return classifier.call(dropout.forward(pooled)).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"BertForSequenceClassification(hidden={bert.Config.HiddenSize}, labels={NumLabels}, pooling={Pooling})");
}
