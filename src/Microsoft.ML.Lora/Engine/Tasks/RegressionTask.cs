using System.Globalization;
using Microsoft.ML.Data;
#if !MICROSOFT_ML_LORA_ONNX
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models.Onnx;
using static TorchSharp.torch;
#endif

namespace Microsoft.ML.Lora.Engine.Tasks;

/// <summary>
/// Single label: the head predicts the standardised label ((label − mean) / spread, <c>LabelScaling</c>) with
/// mean squared error; Score is the value in label units. Hugging Face's head predicts the label: the scaling is folded
/// into its weights (exact).
/// </summary>
internal sealed class RegressionTask : LoraTask
{
    public static readonly RegressionTask Instance = new();

    private RegressionTask()
    {
    }

    public override LoraTaskKind Kind => LoraTaskKind.Regression;

    public override bool IsClassification => false;

    public override int OutputCount(int classCount) => 1;

    public override void AddOutputColumns(List<(string Name, DataViewType Type, DataViewSchema.Annotations Annotations)> columns, Data.ColumnNames names, LabelInfo label) =>
        columns.Add((names.Score, NumberDataViewType.Single, DataViewSchema.Annotations.Empty));

    public override Delegate CreateGetter(LabelInfo label, int outputIndex, Func<(float[] Outputs, int Offset)> current) =>
        (ValueGetter<float>)((ref float value) =>
        {
            var (outputs, offset) = current();
            value = outputs[offset];
        });

#if !MICROSOFT_ML_LORA_ONNX
    public override void AddOutputShape(IDictionary<string, SchemaShape.Column> columns, Data.ColumnNames names, SchemaShape.Column label) =>
        columns[names.Score] = MlNetHost.Column(names.Score, SchemaShape.Column.VectorKind.Scalar, NumberDataViewType.Single, false);

    public override LabelReader CreateLabelReader(DataViewRow row, DataViewSchema.Column column, int classCount)
    {
        var getter = row.GetGetter<float>(column);
        float label = 0;
        return (out int classIndex, out float value) =>
        {
            getter(ref label);
            classIndex = 0;
            value = label;
            return float.IsFinite(label);
        };
    }

    protected override void ValidateLabels(LabelStatistics statistics, string labelColumn, string parameterName)
    {
        if (!(statistics.StandardDeviation > 0))
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"Label column '{labelColumn}' has the same value ({statistics.Mean}) in all {statistics.Rows} rows; regression needs varying labels."),
                parameterName);
        }
    }

    public override LabelScaling Scaling(LabelStatistics statistics) => new((float)statistics.Mean, (float)statistics.StandardDeviation);

    public override Tensor Loss<TRow>(Tensor output, IReadOnlyList<TRow> rows, LabelScaling scaling, Device device)
    {
        var targets = HostTransfer.ToDevice(tensor(rows.Select(r => (r.Value - scaling.Mean) / scaling.Scale).ToArray(), ScalarType.Float32), device);
        return nn.functional.mse_loss(output.squeeze(1), targets);
    }

    public override Tensor ToScores(Tensor output, LabelScaling scaling) => output * scaling.Scale + scaling.Mean;

    public override (OnnxBertExporter.OutputTransform Transform, float Scale, float Shift) OnnxOutput(LabelScaling scaling) =>
        (OnnxBertExporter.OutputTransform.Affine, scaling.Scale, scaling.Mean);

    public override (Tensor Weight, Tensor Bias) HeadToHuggingFace(Tensor weight, Tensor bias, LabelScaling scaling)
    {
        using var noGrad = no_grad();
        return (weight.mul(scaling.Scale), bias.mul(scaling.Scale).add(scaling.Mean));
    }

    public override (Tensor Weight, Tensor Bias) HeadFromHuggingFace(Tensor weight, Tensor bias, LabelScaling scaling)
    {
        using var noGrad = no_grad();
        return (weight.div(scaling.Scale), bias.sub(scaling.Mean).div(scaling.Scale));
    }

    public override string[] HuggingFaceLabelNames(LabelInfo label) => ["LABEL_0"];

    public override string HuggingFaceProblemType => "regression";
#endif
}
