using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine.Tasks;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// The task and label facts a trained model needs at prediction time: the task kind, the number of outputs and,
/// for multiclass models, the key count and the label's key values (so PredictedLabel maps back with MapKeyToValue).
/// </summary>
internal sealed class LabelInfo
{
    private LabelInfo(LoraTask task, int classCount, DataViewType? keyValueType, string[]? keyValues)
    {
        Task = task;
        ClassCount = classCount;
        KeyValueType = keyValueType;
        KeyValues = keyValues;
    }

    /// <summary>The task: its loss, outputs and columns.</summary>
    public LoraTask Task { get; }

    /// <summary>The task's public name (recorded in model files).</summary>
    public LoraTaskKind Kind => Task.Kind;

    /// <summary>Classes for multiclass (the key count), 2 for binary, 0 for regression.</summary>
    public int ClassCount { get; }

    /// <summary>Outputs of the head: the class count for multiclass, 1 otherwise (one logit or one value).</summary>
    public int OutputCount => Task.OutputCount(ClassCount);

    /// <summary>Item type of the label's key values (text, a number type or Boolean), or null when the label had none.</summary>
    public DataViewType? KeyValueType { get; }

    /// <summary>The key values as invariant strings, in key order.</summary>
    public IReadOnlyList<string>? KeyValues { get; }

    /// <summary>Reads the task from the label column type.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The type is not a key, Boolean or Single (message names the column and types).</exception>
    public static LabelInfo FromColumn(DataViewSchema.Column column, string parameterName)
    {
        var type = column.Type;
        var task = LoraTask.FromLabelType(type)
            ?? throw new ArgumentOutOfRangeException(parameterName, $"Label column '{column.Name}' has type {type}; expected {LoraTask.ExpectedLabelTypes}.");
        if (type is KeyDataViewType key)
        {
            if (key.Count < 2 || key.Count > int.MaxValue)
            {
                throw new ArgumentOutOfRangeException(parameterName,
                    string.Create(CultureInfo.InvariantCulture, $"Label column '{column.Name}' is a key with {key.Count} values; a multiclass label needs at least 2."));
            }

            var (valueType, values) = ReadKeyValues(column, (int)key.Count);
            return new LabelInfo(task, (int)key.Count, valueType, values);
        }

        return new LabelInfo(task, task.IsClassification ? 2 : 0, null, null);
    }

    public static LabelInfo Create(LoraTaskKind task, int classCount, DataViewType? keyValueType, string[]? keyValues) => new(LoraTask.For(task), classCount, keyValueType, keyValues);

    /// <summary>The name a model file records for a key value type: "", "Text", "Boolean" or the number type's name.</summary>
    public static string TypeName(DataViewType? type) => type switch
    {
        null => string.Empty,
        TextDataViewType => "Text",
        BooleanDataViewType => "Boolean",
        NumberDataViewType n => n.RawType.Name,
        _ => string.Empty,
    };

    /// <summary>The key value type recorded as <paramref name="name"/> by <see cref="TypeName"/>.</summary>
    /// <exception cref="InvalidDataException">The name is not one <see cref="TypeName"/> writes.</exception>
    public static DataViewType? ParseTypeName(string name) => name switch
    {
        "" => null,
        "Text" => TextDataViewType.Instance,
        "Boolean" => BooleanDataViewType.Instance,
        nameof(Single) => NumberDataViewType.Single,
        nameof(Double) => NumberDataViewType.Double,
        nameof(SByte) => NumberDataViewType.SByte,
        nameof(Int16) => NumberDataViewType.Int16,
        nameof(Int32) => NumberDataViewType.Int32,
        nameof(Int64) => NumberDataViewType.Int64,
        nameof(Byte) => NumberDataViewType.Byte,
        nameof(UInt16) => NumberDataViewType.UInt16,
        nameof(UInt32) => NumberDataViewType.UInt32,
        nameof(UInt64) => NumberDataViewType.UInt64,
        _ => throw new InvalidDataException($"Unknown key value type '{name}' in this model file."),
    };

    /// <summary>The key type of PredictedLabel (multiclass).</summary>
    public KeyDataViewType PredictedKeyType => new(typeof(uint), ClassCount);

    /// <summary>Adds the label's key values as KeyValues annotation (multiclass with key values).</summary>
    public void AddKeyValues(DataViewSchema.Annotations.Builder builder)
    {
        if (KeyValueType is null || KeyValues is null)
        {
            return;
        }

        switch (KeyValueType)
        {
            case TextDataViewType:
                Add(builder, TextDataViewType.Instance, KeyValues.Select(v => v.AsMemory()).ToArray());
                break;
            case BooleanDataViewType:
                Add(builder, BooleanDataViewType.Instance, KeyValues.Select(bool.Parse).ToArray());
                break;
            default:
                AddNumber(builder, (NumberDataViewType)KeyValueType);
                break;
        }
    }

    /// <summary>Adds SlotNames (the key values as text) to the multiclass Score vector when the label has key values.</summary>
    public void AddSlotNames(DataViewSchema.Annotations.Builder builder)
    {
        if (KeyValues is null)
        {
            return;
        }

        var names = new VBuffer<ReadOnlyMemory<char>>(KeyValues.Count, KeyValues.Select(v => v.AsMemory()).ToArray());
        builder.Add(AnnotationUtils.Kinds.SlotNames, new VectorDataViewType(TextDataViewType.Instance, KeyValues.Count),
            (ref VBuffer<ReadOnlyMemory<char>> value) => names.CopyTo(ref value));
    }

    private void AddNumber(DataViewSchema.Annotations.Builder builder, NumberDataViewType type)
    {
        var c = CultureInfo.InvariantCulture;
        var values = KeyValues!;
        if (type.RawType == typeof(float)) { Add(builder, type, values.Select(v => float.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(double)) { Add(builder, type, values.Select(v => double.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(sbyte)) { Add(builder, type, values.Select(v => sbyte.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(short)) { Add(builder, type, values.Select(v => short.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(int)) { Add(builder, type, values.Select(v => int.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(long)) { Add(builder, type, values.Select(v => long.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(byte)) { Add(builder, type, values.Select(v => byte.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(ushort)) { Add(builder, type, values.Select(v => ushort.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(uint)) { Add(builder, type, values.Select(v => uint.Parse(v, c)).ToArray()); }
        else if (type.RawType == typeof(ulong)) { Add(builder, type, values.Select(v => ulong.Parse(v, c)).ToArray()); }
    }

    private static void Add<T>(DataViewSchema.Annotations.Builder builder, PrimitiveDataViewType itemType, T[] values)
    {
        var buffer = new VBuffer<T>(values.Length, values);
        builder.Add(AnnotationUtils.Kinds.KeyValues, new VectorDataViewType(itemType, values.Length),
            (ref VBuffer<T> value) => buffer.CopyTo(ref value));
    }

    private static (DataViewType? Type, string[]? Values) ReadKeyValues(DataViewSchema.Column column, int count)
    {
        var annotation = column.Annotations.Schema.GetColumnOrNull(AnnotationUtils.Kinds.KeyValues);
        if (annotation is null || annotation.Value.Type is not VectorDataViewType { ItemType: var itemType } vector || vector.Size != count)
        {
            return (null, null);
        }

        string[]? values = itemType switch
        {
            TextDataViewType => Read<ReadOnlyMemory<char>>(column, v => v.ToString()),
            BooleanDataViewType => Read<bool>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(float) => Read<float>(column, v => v.ToString("R", CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(double) => Read<double>(column, v => v.ToString("R", CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(sbyte) => Read<sbyte>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(short) => Read<short>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(int) => Read<int>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(long) => Read<long>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(byte) => Read<byte>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(ushort) => Read<ushort>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(uint) => Read<uint>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            NumberDataViewType n when n.RawType == typeof(ulong) => Read<ulong>(column, v => v.ToString(CultureInfo.InvariantCulture)),
            _ => null,
        };
        return values is null ? (null, null) : (itemType, values);
    }

    private static string[] Read<T>(DataViewSchema.Column column, Func<T, string> format)
    {
        VBuffer<T> buffer = default;
        column.GetKeyValues(ref buffer);
        return buffer.DenseValues().Select(format).ToArray();
    }
}
