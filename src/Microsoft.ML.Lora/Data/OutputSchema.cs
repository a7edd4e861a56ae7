using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;

namespace Microsoft.ML.Lora.Data;

/// <summary>Schema checks and the output columns of a trained model (Score; PredictedLabel; Probability for binary).</summary>
internal static class OutputSchema
{
    /// <summary>Output columns in order: Score, then PredictedLabel and Probability where the task has them.</summary>
    public static List<(string Name, DataViewType Type, DataViewSchema.Annotations Annotations)> Columns(ColumnNames names, LabelInfo label)
    {
        var result = new List<(string, DataViewType, DataViewSchema.Annotations)>();
        label.Task.AddOutputColumns(result, names, label);
        return result;
    }

    /// <summary>Input columns followed by the output columns (an output hides an input of the same name).</summary>
    public static DataViewSchema Build(DataViewSchema input, ColumnNames names, LabelInfo label)
    {
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(input);
        foreach (var (name, type, annotations) in Columns(names, label))
        {
            builder.AddColumn(name, type, annotations);
        }

        return builder.ToSchema();
    }

    /// <summary>Checks that the text column(s) exist and hold text.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Names the column, the expected and the actual type.</exception>
    public static void CheckTextColumns(DataViewSchema schema, ColumnNames names, string parameterName)
    {
        CheckText(schema, names.Text, "text", parameterName);
        if (names.Pair is not null)
        {
            CheckText(schema, names.Pair, "text pair", parameterName);
        }
    }

    private static void CheckText(DataViewSchema schema, string name, string role, string parameterName)
    {
        var column = schema.GetColumnOrNull(name);
        if (column is null)
        {
            throw new ArgumentOutOfRangeException(parameterName, $"The input has no {role} column '{name}' (expected type String).");
        }

        if (column.Value.Type is not TextDataViewType)
        {
            throw new ArgumentOutOfRangeException(parameterName, $"The {role} column '{name}' has type {column.Value.Type}; expected String.");
        }
    }
}
