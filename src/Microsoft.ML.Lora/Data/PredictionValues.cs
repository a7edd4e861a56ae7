using Microsoft.ML.Data;
using Microsoft.ML.Lora.Engine;

namespace Microsoft.ML.Lora.Data;

/// <summary>Getters for the output columns of one row, read from a row-major block of model outputs.</summary>
internal static class PredictionValues
{
    /// <summary>
    /// Creates the getter of output column <paramref name="outputIndex"/> (0 = Score, then as in <see cref="OutputSchema.Columns"/>);
    /// <paramref name="current"/> returns the model outputs and the offset of the current row.
    /// </summary>
    public static Delegate CreateGetter(LabelInfo label, int outputIndex, Func<(float[] Outputs, int Offset)> current) =>
        label.Task.CreateGetter(label, outputIndex, current);
}
