using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Engine.Tasks;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The classification head as Hugging Face's <c>BertForSequenceClassification</c> defines it, and the exact conversion
/// between it and ours, used where adapters cross into the Python world (<see cref="LoraTransformer.SavePeftAdapter"/>,
/// <see cref="LoraFineTuningOptions.InitialPeftAdapter"/>). Files always hold Hugging Face's semantics:
/// <list type="bullet">
/// <item>Binary: ours is one logit z (Probability = sigmoid(z)); Hugging Face's is two logits with softmax. Rows [0, w] and
/// biases [0, b] give logits [0, z], and softmax([0, z])[1] = sigmoid(z): exact. Back: w₁ − w₀, b₁ − b₀.</item>
/// <item>Regression: ours predicts the standardised label (value = output·scale + mean); Hugging Face's predicts the label.
/// Scaling the weights by scale and the bias by scale, plus mean, folds that in: exact. Back: the inverse.</item>
/// <item>Multiclass: the same logits (Score is their softmax).</item>
/// </list>
/// Pooling: Hugging Face pools with the pooler (dense + tanh) on [CLS]; <see cref="PoolingMode.Cls"/> on a base that has a
/// pooler is exactly that. Mean pooling has no Hugging Face equivalent: the export says so in <see cref="FileName"/>.
/// </summary>
internal static class HuggingFaceHead
{
    /// <summary>The file beside adapter_config.json that describes the head (its keys are <c>from_pretrained</c> arguments).</summary>
    public const string FileName = "head_config.json";

    public const string WeightKey = "base_model.model.classifier.weight";

    public const string BiasKey = "base_model.model.classifier.bias";

    /// <summary>Our head tensors → Hugging Face's (new tensors); the task knows the conversion.</summary>
    public static (Tensor Weight, Tensor Bias) ToHuggingFace(LoraTask task, LabelScaling scaling, Tensor weight, Tensor bias) =>
        task.HeadToHuggingFace(weight, bias, scaling);

    /// <summary>Hugging Face's head tensors → ours (new tensors); a head already in our binary form ([1, H]) is kept.</summary>
    public static (Tensor Weight, Tensor Bias) FromHuggingFace(LoraTask task, LabelScaling scaling, Tensor weight, Tensor bias) =>
        task.HeadFromHuggingFace(weight, bias, scaling);

    /// <summary>
    /// What a Python user needs besides the adapter: the keyword arguments of
    /// <c>AutoModelForSequenceClassification.from_pretrained</c> (num_labels, id2label, label2id, problem_type), the pooling,
    /// and whether the export is exactly Hugging Face's model (with the reason when not).
    /// </summary>
    public static string Describe(LabelInfo label, AdapterSettings settings, bool basePooler)
    {
        string[] names = label.Task.HuggingFaceLabelNames(label);
        var id2label = new JsonObject();
        var label2id = new JsonObject();
        for (int i = 0; i < names.Length; i++)
        {
            id2label[i.ToString(CultureInfo.InvariantCulture)] = names[i];
            label2id[names[i]] = i;
        }

        bool huggingFacePooling = settings.Pooling == PoolingMode.Cls && basePooler;
        var json = new JsonObject
        {
            ["architectures"] = new JsonArray("BertForSequenceClassification"),
            ["num_labels"] = names.Length,
            ["id2label"] = id2label,
            ["label2id"] = label2id,
            ["problem_type"] = label.Task.HuggingFaceProblemType,
            ["pooling"] = settings.Pooling == PoolingMode.Mean ? "mean" : basePooler ? "cls_pooler" : "cls",
            ["max_sequence_length"] = settings.MaxSequenceLength,
            ["huggingface_compatible"] = huggingFacePooling,
        };
        if (settings.Truncation == Models.TruncationStrategy.HeadTail)
        {
            // Hugging Face's tokenizers keep the head of a long text; the model was trained (and scores) on head + tail.
            json["truncation"] = "head_tail";
            json["truncation_note"] = string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"Texts longer than max_sequence_length were cut to their first round(budget * 128 / 510) and last word pieces (budget = max_sequence_length - 2, Sun et al. 2019); cut the token ids the same way for identical scores, as Hugging Face's tokenizers keep only the head.");
        }

        if (!huggingFacePooling)
        {
            json["note"] = settings.Pooling == PoolingMode.Mean
                ? "The head reads the mean of the token states over the attention mask; BertForSequenceClassification reads the pooler output of [CLS]. Loaded into AutoModelForSequenceClassification the predictions differ: train with Pooling = Cls on a base with a pooler for an exact export."
                : "The head reads the [CLS] state; the base has no pooler, which BertForSequenceClassification would create with random weights.";
        }

        return json.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}
