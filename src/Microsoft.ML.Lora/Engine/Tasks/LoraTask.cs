using Microsoft.ML.Data;
#if !MICROSOFT_ML_LORA_ONNX
using Microsoft.ML.Lora.Models.Onnx;
using static TorchSharp.torch;
#endif

namespace Microsoft.ML.Lora.Engine.Tasks;

/// <summary>
/// Everything one task knows, in one object: which label type selects it, how its labels are read, counted and checked,
/// its loss and accuracy, how the head's raw output becomes the scores <c>Transform</c> returns (and the same in an ONNX
/// export), its output columns and their values, and its head in Hugging Face's form. The engine, the data view and the
/// model file ask the task instead of switching on <see cref="LoraTaskKind"/>; a model family (text, images) never
/// knows which task it serves. One instance per kind: <see cref="For"/>.
/// </summary>
/// <remarks>
/// The ONNX scoring package compiles this folder too (columns and values only): the members that need TorchSharp are
/// left out there.
/// </remarks>
internal abstract class LoraTask
{
    /// <summary>The label types a task can be read from, for error messages.</summary>
    public const string ExpectedLabelTypes = "a key type (multiclass: use MapValueToKey), Boolean (binary) or Single (regression)";

    /// <summary>The public name of this task.</summary>
    public abstract LoraTaskKind Kind { get; }

    /// <summary>The task object of <paramref name="kind"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not a defined kind.</exception>
    public static LoraTask For(LoraTaskKind kind) => kind switch
    {
        LoraTaskKind.MulticlassClassification => MulticlassTask.Instance,
        LoraTaskKind.BinaryClassification => BinaryTask.Instance,
        LoraTaskKind.Regression => RegressionTask.Instance,
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown task kind."),
    };

    /// <summary>The task a label column of <paramref name="type"/> selects: key → multiclass, Boolean → binary, Single → regression; null for any other type.</summary>
    public static LoraTask? FromLabelType(DataViewType type) => type switch
    {
        KeyDataViewType => MulticlassTask.Instance,
        BooleanDataViewType => BinaryTask.Instance,
        _ when type == NumberDataViewType.Single => RegressionTask.Instance,
        _ => null,
    };

    /// <summary>Outputs of the head: the class count for multiclass, 1 otherwise (one logit or one value).</summary>
    public abstract int OutputCount(int classCount);

    /// <summary>True for classification (accuracy, class counts), false for regression.</summary>
    public abstract bool IsClassification { get; }

    /// <summary>Appends the task's output columns in order (Score first; see <see cref="CreateGetter"/>).</summary>
    public abstract void AddOutputColumns(List<(string Name, DataViewType Type, DataViewSchema.Annotations Annotations)> columns, Data.ColumnNames names, LabelInfo label);

    /// <summary>
    /// The getter of output column <paramref name="outputIndex"/> (as in <see cref="AddOutputColumns"/>) over one row of
    /// scores; <paramref name="current"/> returns the scores block and the offset of the current row.
    /// </summary>
    public abstract Delegate CreateGetter(LabelInfo label, int outputIndex, Func<(float[] Outputs, int Offset)> current);

#if !MICROSOFT_ML_LORA_ONNX
    /// <summary>The output columns a label column shape selects, added to <paramref name="columns"/> (the estimator's GetOutputSchema).</summary>
    public abstract void AddOutputShape(IDictionary<string, SchemaShape.Column> columns, Data.ColumnNames names, SchemaShape.Column label);

    /// <summary>The task a label column shape selects (see <see cref="FromLabelType"/>), or null.</summary>
    public static LoraTask? FromLabelShape(SchemaShape.Column label)
    {
        if (label.Kind != SchemaShape.Column.VectorKind.Scalar)
        {
            return null;
        }

        return label.IsKey ? MulticlassTask.Instance
            : label.ItemType == BooleanDataViewType.Instance ? BinaryTask.Instance
            : label.ItemType == NumberDataViewType.Single ? RegressionTask.Instance
            : null;
    }

    /// <summary>
    /// Creates the reader of the label of the current row of <paramref name="row"/>: it returns false for a missing label
    /// (key 0 or out of range, a NaN or infinite value), else the class index (classification) and the value (binary: 0/1).
    /// </summary>
    public abstract LabelReader CreateLabelReader(DataViewRow row, DataViewSchema.Column column, int classCount);

    /// <summary>Reads the label column once: usable rows, class counts or the label mean and spread, skipped rows.</summary>
    public LabelStatistics ReadStatistics(IDataView data, string labelColumn, int classCount)
    {
        var column = data.Schema[labelColumn];
        using var cursor = data.GetRowCursor([column]);
        var read = CreateLabelReader(cursor, column, classCount);
        long rows = 0, skipped = 0;
        var counts = new long[Math.Max(classCount, 2)];
        double sum = 0, sumSquares = 0;
        while (cursor.MoveNext())
        {
            if (!read(out int cls, out float value))
            {
                skipped++;
                continue;
            }

            if (IsClassification)
            {
                counts[cls]++;
            }
            else
            {
                sum += value;
                sumSquares += (double)value * value;
            }

            rows++;
        }

        double mean = rows > 0 ? sum / rows : 0;
        double variance = rows > 1 ? Math.Max(0, (sumSquares - rows * mean * mean) / (rows - 1)) : 0;
        return new LabelStatistics(rows, counts, mean, Math.Sqrt(variance), skipped);
    }

    /// <summary>Checks that training can start: labelled rows, and what the task needs of them (two classes, a varying value).</summary>
    /// <exception cref="ArgumentException">Names the label column and what is wrong.</exception>
    public void Validate(LabelStatistics statistics, string labelColumn, string parameterName)
    {
        if (statistics.Rows == 0)
        {
            throw new ArgumentException(
                $"The training data has no rows with a label in column '{labelColumn}'; LoRA fine-tuning needs labelled rows.", parameterName);
        }

        ValidateLabels(statistics, labelColumn, parameterName);
    }

    /// <summary>The task's own check of the label statistics (see <see cref="Validate"/>).</summary>
    protected abstract void ValidateLabels(LabelStatistics statistics, string labelColumn, string parameterName);

    /// <summary>How labels are standardised for training (regression: mean and spread; otherwise the identity).</summary>
    public virtual LabelScaling Scaling(LabelStatistics statistics) => LabelScaling.Identity;

    /// <summary>The mean loss of a batch of head outputs [n, OutputCount] against the rows' labels.</summary>
    public abstract Tensor Loss<TRow>(Tensor output, IReadOnlyList<TRow> rows, LabelScaling scaling, Device device)
        where TRow : ILabeledRow;

    /// <summary>Rows whose predicted class equals their label, counted on the device (classification only).</summary>
    public Tensor CorrectPredictions<TRow>(Tensor output, IReadOnlyList<TRow> rows, Device device)
        where TRow : ILabeledRow
    {
        var targets = HostTransfer.ToDevice(tensor(rows.Select(r => (long)r.Class).ToArray(), ScalarType.Int64), device);
        return PredictedClasses(output).eq(targets).sum();
    }

    /// <summary>The predicted class index of each row, as <see cref="CreateGetter"/> predicts it (classification only).</summary>
    protected virtual Tensor PredictedClasses(Tensor output) => throw new NotSupportedException($"{Kind} has no classes.");

    /// <summary>Head outputs → the scores <c>Transform</c> returns (multiclass: softmax; binary: the logit; regression: label units).</summary>
    public abstract Tensor ToScores(Tensor output, LabelScaling scaling);

    /// <summary>The same as <see cref="ToScores"/>, as the output stage of an ONNX export.</summary>
    public abstract (OnnxBertExporter.OutputTransform Transform, float Scale, float Shift) OnnxOutput(LabelScaling scaling);

    /// <summary>Our head tensors → Hugging Face's (new tensors; see <see cref="HuggingFaceHead"/>).</summary>
    public virtual (Tensor Weight, Tensor Bias) HeadToHuggingFace(Tensor weight, Tensor bias, LabelScaling scaling) => (weight.clone(), bias.clone());

    /// <summary>Hugging Face's head tensors → ours (new tensors).</summary>
    public virtual (Tensor Weight, Tensor Bias) HeadFromHuggingFace(Tensor weight, Tensor bias, LabelScaling scaling) => (weight.clone(), bias.clone());

    /// <summary>Hugging Face's label names (id2label) for this task.</summary>
    public abstract string[] HuggingFaceLabelNames(LabelInfo label);

    /// <summary>Hugging Face's <c>problem_type</c>.</summary>
    public virtual string HuggingFaceProblemType => "single_label_classification";
#endif
}
