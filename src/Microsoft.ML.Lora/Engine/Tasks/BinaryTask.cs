using Microsoft.ML.Data;
#if !MICROSOFT_ML_LORA_ONNX
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models.Onnx;
using static TorchSharp.torch;
#endif

namespace Microsoft.ML.Lora.Engine.Tasks;

/// <summary>
/// Boolean label: one logit z, binary cross-entropy with logits; Score is z, Probability sigmoid(z) and PredictedLabel
/// z &gt; 0. Hugging Face's head has two logits: [0, z] (softmax([0, z])[1] = sigmoid(z), exact).
/// </summary>
internal sealed class BinaryTask : LoraTask
{
    public static readonly BinaryTask Instance = new();

    private BinaryTask()
    {
    }

    public override LoraTaskKind Kind => LoraTaskKind.BinaryClassification;

    public override bool IsClassification => true;

    public override int OutputCount(int classCount) => 1;

    public override void AddOutputColumns(List<(string Name, DataViewType Type, DataViewSchema.Annotations Annotations)> columns, Data.ColumnNames names, LabelInfo label)
    {
        columns.Add((names.Score, NumberDataViewType.Single, DataViewSchema.Annotations.Empty));
        columns.Add((names.Probability, NumberDataViewType.Single, DataViewSchema.Annotations.Empty));
        columns.Add((names.PredictedLabel, BooleanDataViewType.Instance, DataViewSchema.Annotations.Empty));
    }

    public override Delegate CreateGetter(LabelInfo label, int outputIndex, Func<(float[] Outputs, int Offset)> current) => outputIndex switch
    {
        1 => (ValueGetter<float>)((ref float value) =>
        {
            var (outputs, offset) = current();
            value = 1f / (1f + MathF.Exp(-outputs[offset]));
        }),
        2 => (ValueGetter<bool>)((ref bool value) =>
        {
            var (outputs, offset) = current();
            value = outputs[offset] > 0;
        }),
        _ => (ValueGetter<float>)((ref float value) =>
        {
            var (outputs, offset) = current();
            value = outputs[offset];
        }),
    };

#if !MICROSOFT_ML_LORA_ONNX
    public override void AddOutputShape(IDictionary<string, SchemaShape.Column> columns, Data.ColumnNames names, SchemaShape.Column label)
    {
        var scalar = SchemaShape.Column.VectorKind.Scalar;
        columns[names.Score] = MlNetHost.Column(names.Score, scalar, NumberDataViewType.Single, false);
        columns[names.Probability] = MlNetHost.Column(names.Probability, scalar, NumberDataViewType.Single, false);
        columns[names.PredictedLabel] = MlNetHost.Column(names.PredictedLabel, scalar, BooleanDataViewType.Instance, false);
    }

    public override LabelReader CreateLabelReader(DataViewRow row, DataViewSchema.Column column, int classCount)
    {
        var getter = row.GetGetter<bool>(column);
        bool flag = false;
        return (out int classIndex, out float value) =>
        {
            getter(ref flag);
            classIndex = flag ? 1 : 0;
            value = classIndex;
            return true;
        };
    }

    protected override void ValidateLabels(LabelStatistics statistics, string labelColumn, string parameterName) =>
        MulticlassTask.RequireTwoClasses(statistics, labelColumn, parameterName);

    public override Tensor Loss<TRow>(Tensor output, IReadOnlyList<TRow> rows, LabelScaling scaling, Device device)
    {
        var targets = HostTransfer.ToDevice(tensor(rows.Select(r => (float)r.Class).ToArray(), ScalarType.Float32), device);
        return nn.functional.binary_cross_entropy_with_logits(output.squeeze(1), targets);
    }

    protected override Tensor PredictedClasses(Tensor output) => output.squeeze(1).gt(0).to(ScalarType.Int64);

    public override Tensor ToScores(Tensor output, LabelScaling scaling) => output;

    public override (OnnxBertExporter.OutputTransform Transform, float Scale, float Shift) OnnxOutput(LabelScaling scaling) =>
        (OnnxBertExporter.OutputTransform.None, 1f, 0f);

    /// <summary>Rows [0, w] and biases [0, b]: logits [0, z].</summary>
    public override (Tensor Weight, Tensor Bias) HeadToHuggingFace(Tensor weight, Tensor bias, LabelScaling scaling)
    {
        using var noGrad = no_grad();
        return (cat([zeros_like(weight), weight], 0), cat([zeros_like(bias), bias], 0));
    }

    /// <summary>w₁ − w₀, b₁ − b₀; a head already in our form ([1, H]) is kept.</summary>
    public override (Tensor Weight, Tensor Bias) HeadFromHuggingFace(Tensor weight, Tensor bias, LabelScaling scaling)
    {
        using var noGrad = no_grad();
        return weight.shape[0] == 2
            ? (weight[1].sub(weight[0]).unsqueeze(0), bias[1].sub(bias[0]).unsqueeze(0))
            : (weight.clone(), bias.clone());
    }

    public override string[] HuggingFaceLabelNames(LabelInfo label) => ["False", "True"];
#endif
}
