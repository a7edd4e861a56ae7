using System.Globalization;
using Microsoft.ML.Data;
#if !MICROSOFT_ML_LORA_ONNX
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models.Onnx;
using static TorchSharp.torch;
#endif

namespace Microsoft.ML.Lora.Engine.Tasks;

/// <summary>
/// Key-typed label: one logit per class, cross-entropy loss; Score is the softmax (with the label's key values as slot
/// names) and PredictedLabel the arg-max as a key (with the label's key values, so MapKeyToValue maps it back).
/// </summary>
internal sealed class MulticlassTask : LoraTask
{
    public static readonly MulticlassTask Instance = new();

    private MulticlassTask()
    {
    }

    public override LoraTaskKind Kind => LoraTaskKind.MulticlassClassification;

    public override bool IsClassification => true;

    public override int OutputCount(int classCount) => classCount;

    public override void AddOutputColumns(List<(string Name, DataViewType Type, DataViewSchema.Annotations Annotations)> columns, Data.ColumnNames names, LabelInfo label)
    {
        var scoreAnnotations = new DataViewSchema.Annotations.Builder();
        label.AddSlotNames(scoreAnnotations);
        columns.Add((names.Score, new VectorDataViewType(NumberDataViewType.Single, label.ClassCount), scoreAnnotations.ToAnnotations()));
        var keyAnnotations = new DataViewSchema.Annotations.Builder();
        label.AddKeyValues(keyAnnotations);
        columns.Add((names.PredictedLabel, label.PredictedKeyType, keyAnnotations.ToAnnotations()));
    }

    public override Delegate CreateGetter(LabelInfo label, int outputIndex, Func<(float[] Outputs, int Offset)> current)
    {
        int width = label.OutputCount;
        if (outputIndex == 0)
        {
            return (ValueGetter<VBuffer<float>>)((ref VBuffer<float> value) =>
            {
                var (outputs, offset) = current();
                var editor = VBufferEditor.Create(ref value, width);
                outputs.AsSpan(offset, width).CopyTo(editor.Values);
                value = editor.Commit();
            });
        }

        return (ValueGetter<uint>)((ref uint value) =>
        {
            var (outputs, offset) = current();
            value = (uint)ArgMax(outputs.AsSpan(offset, width)) + 1;
        });
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best])
            {
                best = i;
            }
        }

        return best;
    }

#if !MICROSOFT_ML_LORA_ONNX
    public override void AddOutputShape(IDictionary<string, SchemaShape.Column> columns, Data.ColumnNames names, SchemaShape.Column label)
    {
        var scalar = SchemaShape.Column.VectorKind.Scalar;
        var slotNames = MlNetHost.Column(AnnotationUtils.Kinds.SlotNames, SchemaShape.Column.VectorKind.Vector, TextDataViewType.Instance, false);
        var keyValues = label.Annotations.FirstOrDefault(c => c.Name == AnnotationUtils.Kinds.KeyValues);
        bool hasKeyValues = keyValues.Name is not null;
        columns[names.Score] = MlNetHost.Column(names.Score, SchemaShape.Column.VectorKind.Vector, NumberDataViewType.Single, false,
            hasKeyValues ? new SchemaShape([slotNames]) : null);
        columns[names.PredictedLabel] = MlNetHost.Column(names.PredictedLabel, scalar, NumberDataViewType.UInt32, true,
            hasKeyValues ? new SchemaShape([keyValues]) : null);
    }

    public override LabelReader CreateLabelReader(DataViewRow row, DataViewSchema.Column column, int classCount)
    {
        var getter = row.GetGetter<uint>(column);
        uint key = 0;
        return (out int classIndex, out float value) =>
        {
            getter(ref key);
            value = 0;
            classIndex = (int)key - 1;
            return key != 0 && key <= classCount;
        };
    }

    protected override void ValidateLabels(LabelStatistics statistics, string labelColumn, string parameterName) =>
        RequireTwoClasses(statistics, labelColumn, parameterName);

    public override Tensor Loss<TRow>(Tensor output, IReadOnlyList<TRow> rows, LabelScaling scaling, Device device)
    {
        var targets = HostTransfer.ToDevice(tensor(rows.Select(r => (long)r.Class).ToArray(), ScalarType.Int64), device);
        return nn.functional.cross_entropy(output, targets);
    }

    protected override Tensor PredictedClasses(Tensor output) => output.argmax(1);

    public override Tensor ToScores(Tensor output, LabelScaling scaling) => nn.functional.softmax(output, 1);

    public override (OnnxBertExporter.OutputTransform Transform, float Scale, float Shift) OnnxOutput(LabelScaling scaling) =>
        (OnnxBertExporter.OutputTransform.Softmax, 1f, 0f);

    public override string[] HuggingFaceLabelNames(LabelInfo label) =>
        label.KeyValues?.ToArray() ?? Enumerable.Range(0, label.ClassCount).Select(i => string.Create(CultureInfo.InvariantCulture, $"LABEL_{i}")).ToArray();

    /// <summary>Classification needs at least two classes among the labelled rows.</summary>
    internal static void RequireTwoClasses(LabelStatistics statistics, string labelColumn, string parameterName)
    {
        int present = statistics.ClassCounts.Count(c => c > 0);
        if (present < 2)
        {
            int only = Array.FindIndex(statistics.ClassCounts, c => c > 0);
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"Label column '{labelColumn}' has a single class (all {statistics.Rows} rows have class index {only}); classification needs at least two classes."),
                parameterName);
        }
    }
#endif
}
