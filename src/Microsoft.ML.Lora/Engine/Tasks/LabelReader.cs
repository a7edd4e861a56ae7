namespace Microsoft.ML.Lora.Engine.Tasks;

/// <summary>
/// Reads the label of a cursor's current row: false for a missing label, else the class index (classification) and the
/// value (regression; 0/1 for binary).
/// </summary>
internal delegate bool LabelReader(out int classIndex, out float value);
