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
    public static Delegate CreateGetter(LabelInfo label, int outputIndex, Func<(float[] Outputs, int Offset)> current)
    {
        int width = label.OutputCount;
        switch (label.Task)
        {
            case LoraTaskKind.MulticlassClassification when outputIndex == 0:
                return (ValueGetter<VBuffer<float>>)((ref VBuffer<float> value) =>
                {
                    var (outputs, offset) = current();
                    var editor = VBufferEditor.Create(ref value, width);
                    outputs.AsSpan(offset, width).CopyTo(editor.Values);
                    value = editor.Commit();
                });
            case LoraTaskKind.MulticlassClassification:
                return (ValueGetter<uint>)((ref uint value) =>
                {
                    var (outputs, offset) = current();
                    value = (uint)ArgMax(outputs.AsSpan(offset, width)) + 1;
                });
            case LoraTaskKind.BinaryClassification when outputIndex == 1:
                return (ValueGetter<float>)((ref float value) =>
                {
                    var (outputs, offset) = current();
                    value = 1f / (1f + MathF.Exp(-outputs[offset]));
                });
            case LoraTaskKind.BinaryClassification when outputIndex == 2:
                return (ValueGetter<bool>)((ref bool value) =>
                {
                    var (outputs, offset) = current();
                    value = outputs[offset] > 0;
                });
            default:
                return (ValueGetter<float>)((ref float value) =>
                {
                    var (outputs, offset) = current();
                    value = outputs[offset];
                });
        }
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
}
