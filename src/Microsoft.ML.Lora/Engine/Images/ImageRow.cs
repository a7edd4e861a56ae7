namespace Microsoft.ML.Lora.Engine.Images;

/// <summary>One image training example: the resized RGB pixels (see <see cref="ImageColumnReader"/>) and the label.</summary>
internal readonly record struct ImageRow(byte[] Rgb, int Class, float Value) : ILabeledRow;
